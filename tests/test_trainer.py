"""The training loop: losses go down, exact resume, checkpoint hygiene, schedule, contrastive_step wiring."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from tteflash.losses import info_nce
from tteflash.train import steps
from tteflash.train.trainer import TrainConfig, contrastive_step, lr_lambda, same_train_config, train


@pytest.fixture
def new_model(seeded_model):
    """Each run starts from a fresh model with the same initial weights."""
    return lambda: seeded_model(3)


def _cfg(**kw):
    base = dict(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=100,
                temperature=0.1, hard_negatives=1, seed=0)
    return TrainConfig(**{**base, **kw})


def test_a_few_steps_lower_both_losses(new_model, train_examples, tmp_path):
    model = new_model()
    visual_before = {k: v.clone() for k, v in model.vlm.model.visual.state_dict().items()}
    lm_before = model.vlm.model.language_model.layers[0].mlp.up_proj.weight.clone()
    hist = train(model, _cfg(steps=15), str(tmp_path), lambda step: train_examples, progress=False)
    h = hist["history"]
    assert [line["step"] for line in h] == list(range(1, 16))
    first, last = h[0], h[-1]
    assert {"contrastive", "cot", "loss", "lr"} <= set(first)
    assert last["contrastive"] < 0.8 * first["contrastive"], (first, last)
    assert last["cot"] < 0.9 * first["cot"], (first, last)
    assert first["loss"] == pytest.approx(first["contrastive"] + first["cot"], rel=1e-5)
    # the vision tower is frozen (freeze_vision=True), the language model moved
    for k, v in model.vlm.model.visual.state_dict().items():
        assert torch.equal(v, visual_before[k]), k
    assert not torch.equal(model.vlm.model.language_model.layers[0].mlp.up_proj.weight, lm_before)
    lines = [json.loads(s) for s in open(tmp_path / "log.jsonl")]
    assert [line["step"] for line in lines] == list(range(1, 16)) and lines[-1] == h[-1]
    assert os.path.exists(tmp_path / "checkpoint.pt") and not os.path.exists(tmp_path / "checkpoint.pt.tmp")
    assert not model.training


def _assert_same_run(a_model, a_hist, b_model, b_hist):
    sa, sb = a_model.state_dict(), b_model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=0, msg=k)
    assert a_hist["step"] == b_hist["step"]
    assert len(a_hist["history"]) == len(b_hist["history"])
    for la, lb in zip(a_hist["history"], b_hist["history"]):
        assert la.keys() == lb.keys()
        for k in la:
            assert la[k] == pytest.approx(lb[k], rel=1e-6, abs=1e-7), (k, la, lb)


def test_resume_after_interruption_continues_the_same_run(new_model, train_examples, tmp_path):
    data = lambda step: train_examples[step % 2 * 4:][:4]  # noqa: E731  (step-dependent data)
    cfg = _cfg(steps=6, batch_size=4)
    a = new_model()
    hist_a = train(a, cfg, str(tmp_path / "a"), data, progress=False)

    b_dir = str(tmp_path / "b")
    b1 = new_model()
    part = train(b1, cfg, b_dir, data, progress=False, stop_after=3)
    assert part["step"] == 3 and len(part["history"]) == 3
    assert os.path.exists(os.path.join(b_dir, "checkpoint.pt"))
    b2 = new_model()  # a new process: fresh model from the same initial weights, same out_dir
    hist_b = train(b2, cfg, b_dir, data, progress=False)
    assert hist_b["step"] == 6
    _assert_same_run(a, hist_a, b2, hist_b)
    # an interrupted-and-resumed run differs from the initial weights (it did train)
    assert not torch.equal(b2.vlm.model.language_model.norm.weight, new_model().vlm.model.language_model.norm.weight)
    # a finished run resumes to a no-op
    again = train(new_model(), cfg, b_dir, data, progress=False)
    assert again["step"] == 6 and again["history"] == hist_b["history"]


def test_resume_between_log_lines_keeps_history(new_model, train_examples, tmp_path):
    data = lambda step: train_examples[step % 2 * 4:][:4]  # noqa: E731
    cfg = _cfg(steps=4, batch_size=4, log_every=2)
    a = new_model()
    hist_a = train(a, cfg, str(tmp_path / "a"), data, progress=False)
    train(new_model(), cfg, str(tmp_path / "b"), data, progress=False, stop_after=3)
    b = new_model()
    hist_b = train(b, cfg, str(tmp_path / "b"), data, progress=False)
    _assert_same_run(a, hist_a, b, hist_b)


def test_resume_with_other_config_is_refused(new_model, train_examples, tmp_path):
    data = lambda step: train_examples[:2]  # noqa: E731
    train(new_model(), _cfg(steps=2, batch_size=2), str(tmp_path), data, progress=False, stop_after=1)
    with pytest.raises(ValueError, match="another TrainConfig"):
        train(new_model(), _cfg(steps=2, batch_size=2, lr=1e-3), str(tmp_path), data, progress=False)


def test_checkpoint_from_before_a_new_setting_resumes_at_its_default(new_model, train_examples, tmp_path):
    data = lambda step: train_examples[:2]  # noqa: E731
    cfg = _cfg(steps=2, batch_size=2)
    train(new_model(), cfg, str(tmp_path), data, progress=False, stop_after=1)
    ckpt = tmp_path / "checkpoint.pt"
    saved = torch.load(ckpt, weights_only=False)
    del saved["config"]["nested_think"]  # as written before the setting existed
    torch.save(saved, ckpt)
    with pytest.raises(ValueError, match="another TrainConfig"):  # the new setting away from its default
        train(new_model(), _cfg(steps=2, batch_size=2, nested_think=True), str(tmp_path), data, progress=False)
    assert train(new_model(), cfg, str(tmp_path), data, progress=False)["step"] == 2


def test_a_setting_that_changed_behaviour_compares_as_its_old_behaviour():
    def saved_before_the_field(**kw):
        return {k: v for k, v in dataclasses.asdict(TrainConfig(**kw)).items() if k != "nested_every_budget"}

    old = saved_before_the_field(nested_think=True)
    assert not same_train_config(old, TrainConfig(nested_think=True))  # the default reads every budget now
    assert same_train_config(old, TrainConfig(nested_think=True, nested_every_budget=False))
    assert same_train_config(saved_before_the_field(), TrainConfig())  # no effect without nested budgets
    assert not same_train_config(saved_before_the_field(lr=0.5), TrainConfig())
    # runs saved before tasks_per_batch drew every task in every step
    before_tasks = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k != "tasks_per_batch"}
    assert not same_train_config(before_tasks, TrainConfig())
    assert same_train_config(before_tasks, TrainConfig(tasks_per_batch=0))


def test_lr_schedule_hand_values():
    f = lr_lambda(TrainConfig(steps=10, warmup_steps=2))
    assert [f(0), f(1)] == pytest.approx([0.5, 1.0])
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.55)  # halfway through the cosine: 0.1 + 0.9 * 0.5
    assert f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="alternate")


def _step_with_forwards(model, examples, cfg, monkeypatch):
    """contrastive_step's losses and the (batch, output) of each model forward it ran, in order (tests using
    it take one_forward_per_pass: forward_by_length is tested against one forward on its own)."""
    seen = []
    real_forward = type(model).forward

    def spy(self, batch, **kw):
        out = real_forward(self, batch, **kw)
        seen.append((batch, out))
        return out

    monkeypatch.setattr(type(model), "forward", spy)
    return contrastive_step(model, examples, cfg), seen


@pytest.mark.parametrize("lengths, max_groups, want", [
    ([5, 5, 5, 5], 3, [[0, 1, 2, 3]]),                      # equal lengths: one forward
    ([10, 300, 12, 290], 3, [[0, 2], [3, 1]]),              # two clusters, by length, shortest first
    ([10, 300, 12, 290], 1, [[0, 2, 3, 1]]),                # max_groups=1: one forward, sorted
    ([40, 80], 3, [[0, 1]]),         # a split saves 40 padded tokens, less than a forward's 64: one forward
    ([10, 80], 3, [[0], [1]]),       # it saves 70: two
    ([], 3, []),
])
def test_length_groups_hand_cases(lengths, max_groups, want):
    assert steps.length_groups(lengths, max_groups) == want


def test_forward_by_length_equals_one_forward(model8, train_examples):
    """Embeddings in row order and the mean CoT loss equal one padded forward of all the rows."""
    rows = [model8.query_row(ex.query, "q", cot=ex.cot, train_cot=True) for ex in train_examples]
    rows += [model8.document_row(ex.candidates[ex.target], "d") for ex in train_examples]
    assert len(steps.length_groups([len(r) for r in rows])) > 1  # the case under test: several forwards
    with torch.no_grad():
        one = model8(model8.make_batch(rows))
        grouped = steps.forward_by_length(model8, rows)
    torch.testing.assert_close(grouped.embeddings, one.embeddings, atol=1e-5, rtol=1e-4)
    assert grouped.cot_token_loss.shape == one.cot_token_loss.shape
    assert grouped.cot_loss.item() == pytest.approx(one.cot_loss.item(), rel=1e-5)


def test_answer_first_cot_is_what_the_think_tokens_decode(model8, train_examples):
    """answer_first_cot: the CoT branch is trained on the answer fact first; by default on the CoT as written."""
    from tteflash.data.bench import answer_first
    ex = next(e for e in train_examples if " . " in e.cot)
    cot_ids = model8.processor.cot_ids
    for flag, cot in [(False, ex.cot), (True, answer_first(ex.cot))]:
        (p,) = steps.query_passes(model8, [ex], TrainConfig(answer_first_cot=flag), 0)
        assert p.rows[:][0].branch_cot == cot_ids(cot)
    assert answer_first(ex.cot) != ex.cot


def test_contrastive_step_deduplicates_targets(model8, train_examples, no_grad_leak, monkeypatch,
                                                one_forward_per_pass):
    """Two copies of an example: one target row, shared by both queries, never its own negative."""
    ex, other = train_examples[0], train_examples[2]
    cfg = TrainConfig(batch_size=3, hard_negatives=1, temperature=0.5, cot_weight=0.0)
    with torch.no_grad():
        res, seen = _step_with_forwards(model8, [ex, ex, other], cfg, monkeypatch)
    assert set(res) == {"contrastive", "loss"}  # cot_weight 0: no CoT rows, no CoT loss
    (q_batch, q_out), (_, d_out) = seen  # queries and targets are separate forwards (no cross padding)
    assert q_out.embeddings.shape[0] == 3
    assert d_out.embeddings.shape[0] == 4  # ex: target + hard negative (shared by both copies); other: the same
    assert len(q_batch.cot_labels) == 0
    expected = info_nce(q_out.embeddings, d_out.embeddings, torch.tensor([0, 0, 2]), 0.5)
    assert res["contrastive"].item() == pytest.approx(expected.item(), abs=1e-6)
    # with the CoT loss on, loss = contrastive + cot_weight * cot
    res2 = contrastive_step(model8, [ex, other], TrainConfig(cot_weight=0.5, hard_negatives=0))
    assert res2["loss"].item() == pytest.approx(res2["contrastive"].item() + 0.5 * res2["cot"].item(), rel=1e-5)
    np.testing.assert_array_less(0, res2["cot"].item())


def test_distillation_pulls_the_query_embedding_to_the_oracle_view(model8, train_examples, no_grad_leak, monkeypatch,
                                                                  one_forward_per_pass):
    """distill_weight adds an oracle-view pass (gold CoT in the prompt, then the think tokens): its own InfoNCE,
    and KL(oracle's || query's softmax over the targets) with no gradient into the oracle side."""
    examples = train_examples[:3]
    cfg = TrainConfig(batch_size=3, hard_negatives=1, temperature=0.5, cot_weight=0.5, distill_weight=0.7)
    res, seen = _step_with_forwards(model8, examples, cfg, monkeypatch)
    assert set(res) == {"contrastive", "cot", "oracle_contrastive", "distill", "loss"}
    (q_batch, q_out), (o_batch, o_out), (d_batch, d_out) = seen
    assert (o_batch.think_mask.sum(-1) == 8).all()  # the oracle view keeps the think tokens
    for i, ex in enumerate(examples):  # ... and carries the gold CoT in its prompt
        assert set(model8.processor.cot_ids(ex.cot)) <= set(o_batch.input_ids[i].tolist())
    assert not (q_batch.input_ids == model8.processor.cot_start).any()  # the query view does not
    positive = torch.tensor([0, 2, 4])  # three different targets, each with one hard negative
    want_con = info_nce(q_out.embeddings, d_out.embeddings, positive, 0.5)
    want_oracle = info_nce(o_out.embeddings, d_out.embeddings, positive, 0.5)
    p_oracle = torch.softmax(o_out.embeddings @ d_out.embeddings.T / 0.5, -1)
    p_query = torch.softmax(q_out.embeddings @ d_out.embeddings.T / 0.5, -1)
    want_distill = (p_oracle * (p_oracle / p_query).log()).sum(-1).mean()  # KL(oracle || query)
    assert res["contrastive"].item() == pytest.approx(want_con.item(), abs=1e-5)
    assert res["oracle_contrastive"].item() == pytest.approx(want_oracle.item(), abs=1e-5)
    assert res["distill"].item() == pytest.approx(want_distill.item(), abs=1e-5)
    assert res["loss"].item() == pytest.approx(
        (want_con + want_oracle + 0.7 * want_distill + 0.5 * res["cot"]).item(), rel=1e-5)
    to_oracle, to_query = torch.autograd.grad(res["distill"], [o_out.embeddings, q_out.embeddings], allow_unused=True)
    assert to_oracle is None and to_query.abs().sum() > 0


def test_distillation_settings_are_checked():
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        TrainConfig(distill_weight=-1.0)
    with pytest.raises(ValueError, match="grad_cache_chunk=0"):
        TrainConfig(distill_weight=1.0, grad_cache_chunk=4)


def test_distillation_with_nested_budgets_reaches_every_budget(make_model, train_examples, monkeypatch,
                                                                one_forward_per_pass):
    """With nested budgets each budget's embedding learns the oracle view's ranking: the KL is the mean over
    budgets, the oracle view (at the step's drawn budget) is one embedding per query."""
    model = make_model(think_tokens=4)
    cfg = TrainConfig(batch_size=3, hard_negatives=1, temperature=0.5, cot_weight=0.0, distill_weight=1.0,
                      nested_think=True, seed=1)
    res, seen = _step_with_forwards(model, train_examples[:3], cfg, monkeypatch)
    (q_batch, q_out), (o_batch, o_out), (_, d_out) = seen
    assert q_out.budget_embeddings.shape[1] == 3 and o_out.budget_embeddings is None  # budgets 1, 2, 4
    assert (o_batch.think_mask.sum(-1) == cfg.think_budget(0, 4)).all()
    docs, positive = d_out.embeddings, torch.tensor([0, 2, 4])
    log_p_oracle = torch.log_softmax(o_out.embeddings @ docs.T / 0.5, -1)
    kl, con = [], []
    for j in range(3):
        q = q_out.budget_embeddings[:, j]
        kl.append((log_p_oracle.exp() * (log_p_oracle - torch.log_softmax(q @ docs.T / 0.5, -1))).sum(-1).mean())
        con.append(info_nce(q, docs, positive, 0.5))
    assert len({round(x.item(), 4) for x in kl}) == 3  # the budgets differ
    assert res["distill"].item() == pytest.approx(sum(kl).item() / 3, abs=1e-5)
    assert res["contrastive"].item() == pytest.approx(sum(con).item() / 3, abs=1e-5)
    want_oracle = info_nce(o_out.embeddings, docs, positive, 0.5)
    assert res["oracle_contrastive"].item() == pytest.approx(want_oracle.item(), abs=1e-5)
