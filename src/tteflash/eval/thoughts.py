"""Is the reasoning right? A model's greedy CoT for test queries against the gold CoT, per task.

TTE-Flash models decode their thoughts from [query][think tokens] (`decode_thoughts`); every other model
(explicit CoT, a base) writes its CoT after the query (`generate_cot`). Two scores per task: the whole CoT
exact, and its last fact (the text after the last " . ", which holds the answer) exact. A model whose
reasoning is not learned has nothing for its think tokens to carry.
"""
from __future__ import annotations

from ..data import bench


def last_fact(cot: str) -> str:
    return cot.strip().split(" . ")[-1]


def thought_accuracy(model, n: int = 20, tasks=bench.TASK_NAMES) -> dict:
    """{"mean": {"cot_exact", "last_fact_exact"}, "by_task": {task: {..., "example": {written, gold}}}}
    over the first n test queries of each task."""
    write = model.decode_thoughts if model.config.think_tokens else model.generate_cot
    by_task = {}
    for task in tasks:
        examples = [bench.make_example(task, "test", i) for i in range(n)]
        written = write([ex.query for ex in examples])
        by_task[task] = {
            "cot_exact": sum(w == ex.cot for w, ex in zip(written, examples)) / n,
            "last_fact_exact": sum(last_fact(w) == last_fact(ex.cot) for w, ex in zip(written, examples)) / n,
            "example": {"written": written[0], "gold": examples[0].cot},
        }
    mean = {k: sum(t[k] for t in by_task.values()) / len(by_task) for k in ("cot_exact", "last_fact_exact")}
    return {"mean": mean, "by_task": by_task}
