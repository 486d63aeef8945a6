"""Rank each query's candidate pool with a model; scores per task, per meta-task and overall; encode cost."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from .metrics import aggregate, mean_metrics, metrics_from_rank, target_rank


def content_key(item: dict) -> str:
    """Identity of a candidate by content, so identical candidates across pools are encoded once."""
    h = hashlib.md5()
    if item.get("text") is not None:
        h.update(b"T" + item["text"].encode())
    for img in ([item["image"]] if item.get("image") is not None else []) + list(item.get("video") or []):
        h.update(b"I" + str(img.size).encode() + img.tobytes())
    return h.hexdigest()


def _time_queries(model, queries, batch_size, cot, think_tokens=None) -> tuple[np.ndarray, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    budget = {} if think_tokens is None else {"think_tokens": think_tokens}  # any encoder without budgets works
    emb = model.encode(queries, batch_size=batch_size, role="query", cot=cot, show_progress_bar=False, **budget)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return emb, (time.perf_counter() - t) * 1000 / max(1, len(queries))


def first_per_task(items, n: int, key=lambda ex: ex.task) -> list:
    """The first n items of each task, tasks in order of first appearance."""
    by_task: dict[str, list] = {}
    for item in items:
        by_task.setdefault(key(item), []).append(item)
    return [item for group in by_task.values() for item in group[:n]]


def query_cost(model, examples, *, batch_size: int = 32, gold_cot: bool = False, b1_queries: int = 45,
               think_tokens: int | None = None, repeats: int = 1) -> tuple[np.ndarray, float, float]:
    """Query embeddings and their encode cost: ms per query at `batch_size` over all queries, and at batch 1
    over the first `b1_queries` queries spread across tasks. repeats: each cost is the fastest of this many
    passes, since other work on a shared machine only ever adds time (single passes of one model on 2 busy
    cores moved by up to 20%)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    queries = [ex.query for ex in examples]
    cots = [ex.cot for ex in examples] if gold_cot else None

    def fastest(rows: list[int], bs: int) -> tuple[np.ndarray, float]:
        qs, cs = [queries[i] for i in rows], [cots[i] for i in rows] if cots else None
        runs = [_time_queries(model, qs, bs, cs, think_tokens) for _ in range(repeats)]
        return runs[0][0], min(ms for _, ms in runs)

    # warm-up at the timed batch size: one-off costs (allocations for these shapes, a GPU's clock ramping up
    # from idle: a 2-query warm-up left the first model timed in a GPU study up to 2x slow) stay untimed
    _time_queries(model, queries[:batch_size], batch_size, cots[:batch_size] if cots else None, think_tokens)
    q_emb, ms_batch = fastest(list(range(len(queries))), batch_size)
    n_tasks = len({ex.task for ex in examples})
    _, ms_b1 = fastest(first_per_task(range(len(examples)), max(1, b1_queries // n_tasks),
                                      key=lambda i: examples[i].task), 1)
    return q_emb, ms_batch, ms_b1


def encode_pools(model, examples, batch_size: int = 64) -> tuple[list[list[int]], np.ndarray]:
    """Each query's pool as indices into the de-duplicated candidates, and those candidates' embeddings
    (the target side: the same for every read-out of one model, so compute it once and pass it on)."""
    keys, unique, pools = {}, [], []
    for ex in examples:
        pool = []
        for c in ex.candidates:
            k = content_key(c)
            if k not in keys:
                keys[k] = len(unique)
                unique.append(c)
            pool.append(keys[k])
        pools.append(pool)
    return pools, model.encode(unique, batch_size=batch_size, role="document", show_progress_bar=False)


def evaluate(model, examples, groups: dict[str, str], *, batch_size: int = 32, gold_cot: bool = False,
             b1_queries: int = 45, think_tokens: int | None = None,
             pools: tuple[list[list[int]], np.ndarray] | None = None) -> dict:
    """Evaluate on `examples` (each with .task, .query, .cot, .candidates, .target).

    gold_cot: give the gold CoT at test time (the explicit-CoT oracle).
    think_tokens: the think budget at test time (default: the model's).
    pools: encode_pools(model, examples) when already computed for this model.
    Encode cost is the query side (targets are indexed once, offline): see query_cost.
    """
    q_emb, ms_batch, ms_b1 = query_cost(model, examples, batch_size=batch_size, gold_cot=gold_cot,
                                        b1_queries=b1_queries, think_tokens=think_tokens)
    pool_ids, d_emb = pools or encode_pools(model, examples, max(batch_size, 64))
    per_query: dict[str, list[dict]] = {}
    for i, ex in enumerate(examples):
        scores = d_emb[pool_ids[i]] @ q_emb[i]
        per_query.setdefault(ex.task, []).append(metrics_from_rank(target_rank(scores, ex.target)))
    by_task = {t: mean_metrics(v) for t, v in per_query.items()}
    by_group, overall = aggregate(by_task, groups)
    return {"overall": overall, "by_group": by_group, "by_task": by_task,
            "encode_ms_per_query": ms_batch, "encode_ms_per_query_b1": ms_b1,
            "n_queries": len(examples), "n_unique_candidates": len(d_emb)}
