"""Scoring a model's written reasoning against the gold CoT (tteflash.eval.thoughts)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tteflash.data import bench
from tteflash.eval.thoughts import answer_fact, thought_accuracy


def _writer(think_tokens: int, write):
    """A stand-in model: `write(query text) -> CoT` for every query, in order."""
    def many(queries):
        return [write(q["text"]) for q in queries]
    return SimpleNamespace(config=SimpleNamespace(think_tokens=think_tokens), decode_thoughts=many, generate_cot=many)


def test_answer_fact_hand_cases():
    assert answer_fact("digits 4 6 . 4 plus 6 is 10") == "4 plus 6 is 10"
    assert answer_fact("4 plus 6 is 10 . digits 4 6", answer_first=True) == "4 plus 6 is 10"
    assert answer_fact("count 3") == answer_fact("count 3", answer_first=True) == "count 3"


@pytest.mark.parametrize("answer_first", [False, True])
def test_thought_accuracy_scores_the_whole_cot_and_its_answer_fact(answer_first):
    tasks, n = ["digit_sum", "count_vqa"], 4
    examples = {t: [bench.make_example(t, "test", i) for i in range(n)] for t in tasks}

    def order(cot):
        return bench.answer_first(cot) if answer_first else cot

    for think_tokens in (0, 2):  # explicit CoT writes with generate_cot, TTE-Flash with decode_thoughts
        it = iter([order(ex.cot) for t in tasks for ex in examples[t]])
        perfect = thought_accuracy(_writer(think_tokens, lambda q: next(it)), n, tasks, answer_first)
        assert perfect["mean"] == {"cot_exact": 1.0, "answer_fact_exact": 1.0}
    # right reasoning, wrong answer fact: no CoT exact, no answer fact; the answer fact alone: only that
    it = iter([ex.cot for t in tasks for ex in examples[t]])
    wrong = thought_accuracy(_writer(0, lambda q: order(next(it) + " . wrong")), n, tasks, answer_first)
    assert wrong["mean"] == {"cot_exact": 0.0, "answer_fact_exact": 0.0}
    it = iter([ex.cot for t in tasks for ex in examples[t]])
    answer_only = thought_accuracy(_writer(0, lambda q: answer_fact(next(it))), n, tasks, answer_first)
    assert answer_only["mean"] == {"cot_exact": 0.0, "answer_fact_exact": 1.0}
