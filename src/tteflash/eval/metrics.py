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


# ---------------------------------------------------------------- graded relevance (MMEB-v2 harness)
# Names follow the reference harness's score files (`ndcg_linear@5` is the visual-document headline).
RANK_METRICS = ("hit@1", "hit@5", "hit@10", "ndcg_linear@5", "ndcg_linear@10", "mrr")


def rank_order(scores, grades) -> np.ndarray:
    """Candidate indices best first. Among equal scores the less relevant candidate goes first, so a tie
    never helps a relevant candidate, whatever the list order (MMEB lists the gold candidate first).
    NaN scores rank last."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    g = np.asarray(grades, dtype=np.float64)
    return np.lexsort((np.arange(len(s)), g, -s))  # last key is primary: score desc, then grade asc, then index


def reference_grade_pairing(qrels: dict) -> dict:
    """The reference harness's graded NDCG: it de-duplicates labels with `list(set(labels))` and then zips
    them with the grades in their original order, so with several relevant documents of different grades a
    grade can land on the wrong document (set order depends on PYTHONHASHSEED). Reproduced for comparability."""
    labels, grades = list(qrels), list(qrels.values())
    return dict(zip(list(set(labels)), grades))


def graded_metrics(ranked_ids, qrels: dict, *, reference_ndcg: bool = False, first: int | None = None) -> dict[str, float]:
    """hit@k, NDCG@k (linear gain) and MRR for one query.

    ranked_ids: candidate ids best first (the whole pool, or its top 10 or more when `first`, the 0-based
    rank of the first relevant candidate in the whole ranking, is given; large global pools).
    qrels: id -> grade (> 0 is relevant).
    reference_ndcg: pair grades with documents as the reference harness does (see reference_grade_pairing).
    """
    relevant = {c for c, g in qrels.items() if g > 0}
    gains = reference_grade_pairing(qrels) if reference_ndcg else qrels
    if first is None:
        first = next((i for i, c in enumerate(ranked_ids) if c in relevant), None)
    out = {f"hit@{k}": float(first is not None and first < k) for k in (1, 5, 10)}
    ideal = sorted((g for g in gains.values() if g > 0), reverse=True)
    for k in (5, 10):
        dcg = sum(gains.get(c, 0) / math.log2(i + 2) for i, c in enumerate(ranked_ids[:k]))
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        out[f"ndcg_linear@{k}"] = dcg / idcg if idcg > 0 else 0.0
    out["mrr"] = 1.0 / (first + 1) if first is not None else 0.0
    return out


def mean_graded(per_query: list[dict[str, float]]) -> dict[str, float]:
    out = {m: float(np.mean([q[m] for q in per_query])) if per_query else 0.0 for m in RANK_METRICS}
    out["num_queries"] = len(per_query)
    return out
