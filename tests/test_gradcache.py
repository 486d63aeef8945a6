"""GradCache: chunked steps give the gradients of one forward over the whole batch; the trainer wiring."""
from __future__ import annotations

import pytest
import torch

from tteflash.train.gradcache import _RngState, grad_cache_step
from tteflash.train.trainer import TrainConfig, contrastive_step, train


@pytest.fixture
def new_model(seeded_model):
    def make():
        m = seeded_model(5)
        m.train()
        for p in m.vlm.model.visual.parameters():
            p.requires_grad_(False)
        return m
    return make


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-6, msg=n)


# (settings, step): the joint step with and without CoT, a nested think budget (k=2 of 4 at step 0 with
# seed 1), the detach schedule (two query passes), the staged schedule's CoT warm-up and second stage.
CASES = {
    "joint+cot": (dict(), 0),
    "contrastive only": (dict(cot_weight=0.0), 0),
    "nested budget": (dict(nested_think=True, seed=1), 0),
    "nested, drawn budget only": (dict(nested_think=True, nested_every_budget=False, seed=1), 0),
    "nested detach": (dict(nested_think=True, schedule="detach", seed=1), 0),
    "detach": (dict(schedule="detach", cot_weight=0.5), 0),
    "staged warm-up": (dict(schedule="staged", steps=10), 0),
    "staged second stage": (dict(schedule="staged", steps=10), 5),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk", [3, 5])  # neither divides 8 queries or the targets
def test_grad_cache_equals_the_whole_batch(new_model, train_examples, case, chunk):
    kw, step = CASES[case]
    cfg = TrainConfig(batch_size=8, hard_negatives=1, temperature=0.1, grad_cache_chunk=chunk, **kw)
    if case.startswith("nested"):
        assert cfg.think_budget(step, 4) < 4
    plain = new_model()
    want = contrastive_step(plain, train_examples, cfg, step)
    want["loss"].backward()
    cached = new_model()
    got = grad_cache_step(cached, train_examples, cfg, step)
    assert got.keys() == want.keys()
    for k in want:
        assert float(got[k]) == pytest.approx(float(want[k].detach()), rel=1e-5), k
    _assert_same_grads(_grads(plain), _grads(cached))


def test_rng_replay_repeats_dropout(new_model, train_examples):
    """Pass (c) replays pass (a)'s RNG state: with dropout on, the re-forward gives the same embeddings."""
    model = new_model()
    for layer in model.vlm.model.language_model.layers:
        layer.self_attn.attention_dropout = 0.5
    rows = [model.query_row(ex.query) for ex in train_examples[:3]]
    rng = _RngState(model.device)
    with torch.no_grad():
        first = model(model.make_batch(rows)).embeddings
        other = model(model.make_batch(rows)).embeddings  # the RNG has moved on: other masks
        with rng.replay():
            again = model(model.make_batch(rows)).embeddings
    assert not torch.allclose(first, other)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def _cfg(**kw):
    return TrainConfig(**{**dict(steps=2, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=100,
                                 temperature=0.1, hard_negatives=1), **kw})


def test_train_with_grad_cache_matches_plain_training(new_model, train_examples, tmp_path, one_forward_per_pass):
    # One forward per pass in the plain step too: two AdamW steps turn any float difference in a near-zero
    # gradient into a difference of lr (length grouping's gradients are checked above, at rtol 1e-4).
    plain, cached = new_model(), new_model()
    h_plain = train(plain, _cfg(), str(tmp_path / "plain"), lambda s: train_examples, progress=False)
    h_cached = train(cached, _cfg(grad_cache_chunk=3), str(tmp_path / "gc"), lambda s: train_examples, progress=False)
    for a, b in zip(h_plain["history"], h_cached["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["cot"] == pytest.approx(a["cot"], rel=1e-5)
    sa, sb = plain.state_dict(), cached.state_dict()
    for k in sa:  # AdamW's first steps are about lr * sign(grad): near-zero gradients amplify float noise
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-4, msg=k)
    assert not torch.equal(sa["vlm.model.language_model.norm.weight"], new_model().state_dict()["vlm.model.language_model.norm.weight"])


def test_grad_cache_refuses_a_custom_step_and_bad_settings(new_model, train_examples, tmp_path):
    with pytest.raises(ValueError, match="custom step_fn"):
        train(new_model(), _cfg(grad_cache_chunk=2), str(tmp_path), lambda s: train_examples,
              step_fn=lambda *a: {}, progress=False)
    with pytest.raises(ValueError, match="grad_cache_chunk must be >= 0"):
        TrainConfig(grad_cache_chunk=-1)
    with pytest.raises(ValueError, match="grad_cache_chunk must be >= 1"):
        grad_cache_step(new_model(), train_examples, TrainConfig(), 0)


# Model variants whose passes read other rows or layers: Coconut-style recurrent think states, an explicit
# CoT written inline before E, E read below the last layer, think tokens on the target side too.
VARIANTS = {
    "recurrent": dict(think_mode="recurrent", think_tokens=2),
    "explicit cot": dict(explicit_cot=True, think_tokens=0),
    "intermediate embed layer": dict(embed_layer=1),
    "think on targets": dict(think_on_targets=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_grad_cache_equals_the_whole_batch_for_every_model_variant(new_model, train_examples, variant):
    import dataclasses

    cfg = TrainConfig(batch_size=8, hard_negatives=1, temperature=0.1, grad_cache_chunk=3)
    plain, cached = new_model(), new_model()
    for m in (plain, cached):
        m.config = dataclasses.replace(m.config, **VARIANTS[variant])
    want = contrastive_step(plain, train_examples, cfg, 0)
    want["loss"].backward()
    got = grad_cache_step(cached, train_examples, cfg, 0)
    assert got.keys() == want.keys() == {"contrastive", "cot", "loss"}
    for k in want:
        assert float(got[k]) == pytest.approx(float(want[k].detach()), rel=1e-5), k
    _assert_same_grads(_grads(plain), _grads(cached))
    default = contrastive_step(new_model(), train_examples, cfg, 0)  # the variant is in effect
    assert float(default["contrastive"].detach()) != pytest.approx(float(want["contrastive"].detach()), rel=1e-4)
