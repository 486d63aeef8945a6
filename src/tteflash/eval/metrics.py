"""Ranking metrics for one query with one relevant candidate (MMEB image / video style).

Ties are broken against the target: a candidate scoring exactly as the target ranks above it, so
the order of the candidate list can never help (MMEB lists the gold candidate first).
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

METRICS = ("hit@1", "hit@5", "ndcg@5", "mrr")


def target_rank(scores, target: int) -> int:
    """1-based rank of the target; ties count against it."""
    s = np.asarray(scores, dtype=np.float64)
    t = s[target]
    if np.isnan(t):
        return len(s)
    return 1 + int((s > t).sum()) + int((s == t).sum()) - 1


def metrics_from_rank(rank: int) -> dict[str, float]:
    return {
        "hit@1": float(rank <= 1),
        "hit@5": float(rank <= 5),
        # linear gain, one relevant item: DCG = 1 / log2(rank + 1), ideal DCG = 1
        "ndcg@5": 1.0 / math.log2(rank + 1) if rank <= 5 else 0.0,
        "mrr": 1.0 / rank,
    }


def mean_metrics(per_query: list[dict[str, float]]) -> dict[str, float]:
    return {m: float(np.mean([q[m] for q in per_query])) if per_query else 0.0 for m in METRICS}


def aggregate(per_task: dict[str, dict[str, float]], groups: dict[str, str]) -> tuple[dict, dict]:
    """Per meta-task (mean over its tasks) and overall (mean over tasks), as MMEB reports."""
    by_group = defaultdict(list)
    for task, scores in per_task.items():
        by_group[groups[task]].append(scores)
    group_scores = {g: mean_metrics(v) for g, v in by_group.items()}
    return group_scores, mean_metrics(list(per_task.values()))
