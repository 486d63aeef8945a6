"""Is the reasoning right? A model's greedy CoT for test queries against the gold CoT, per task.

TTE-Flash models decode their thoughts from [query][think tokens] (`decode_thoughts`); every other model
(explicit CoT, a base) writes its CoT after the query (`generate_cot`). Two scores per task: the whole CoT
exact, and its answer fact (the last fact; the first for a model trained on answer-first CoTs) exact. A
model whose reasoning is not learned has nothing for its think tokens to carry.
"""
from __future__ import annotations

from ..data import bench


def answer_fact(cot: str, answer_first: bool = False) -> str:
    facts = cot.strip().split(bench.FACT_SEPARATOR)
    return facts[0] if answer_first else facts[-1]


def thought_accuracy(model, n: int = 20, tasks=bench.TASK_NAMES, answer_first: bool = False) -> dict:
    """{"mean": {"cot_exact", "answer_fact_exact"}, "by_task": {task: {..., "example": {written, gold}}}}
    over the first n test queries of each task. answer_first: the model was trained on answer-first CoTs
    (TrainConfig.answer_first_cot), and is scored against them."""
    write = model.decode_thoughts if model.config.think_tokens else model.generate_cot
    by_task = {}
    for task in tasks:
        examples = [bench.make_example(task, "test", i) for i in range(n)]
        gold = [bench.answer_first(ex.cot) if answer_first else ex.cot for ex in examples]
        written = write([ex.query for ex in examples])
        by_task[task] = {
            "cot_exact": sum(w == g for w, g in zip(written, gold)) / n,
            "answer_fact_exact": sum(answer_fact(w, answer_first) == answer_fact(g, answer_first)
                                     for w, g in zip(written, gold)) / n,
            "example": {"written": written[0], "gold": gold[0]},
        }
    mean = {k: sum(t[k] for t in by_task.values()) / len(by_task) for k in ("cot_exact", "answer_fact_exact")}
    return {"mean": mean, "by_task": by_task}
