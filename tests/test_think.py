"""Think modes and detached think states (think.py), and the schedules and nested budgets that use them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tteflash.config import TTEFlashConfig
from tteflash.model import TTEFlashModel
from tteflash.losses import info_nce
from tteflash.train.steps import target_rows
from tteflash.train.trainer import TrainConfig, contrastive_step, train

from conftest import TINY


def _reference_recurrent(model, text: str, k: int) -> torch.Tensor:
    """Coconut written out step by step: grow the sequence one fed-back hidden state at a time."""
    p = model.processor
    ids = torch.tensor([p.text_ids(text, "ref")])
    embed = model.vlm.get_input_embeddings()
    seq = embed(ids)
    for _ in range(k):
        h = model.vlm.model.language_model(inputs_embeds=seq).last_hidden_state
        seq = torch.cat([seq, h[:, -1:]], dim=1)
    seq = torch.cat([seq, embed(torch.tensor([[p.embed_token]]))], dim=1)
    h = model.vlm.model.language_model(inputs_embeds=seq).last_hidden_state
    return F.normalize(h[0, -1], dim=-1)


def test_recurrent_mode_equals_step_by_step_reference(make_model):
    model = make_model(think_tokens=4, think_mode="recurrent")
    texts = ["count the red circles", "what is the sum of the digits ?"]  # different lengths: padding
    emb = model.encode(texts, convert_to_tensor=True)
    with torch.no_grad():
        for text, e in zip(texts, emb):
            torch.testing.assert_close(e, _reference_recurrent(model, text, 4), atol=1e-5, rtol=0)
    # the learned think embeddings play no part in recurrent mode; they do in parallel mode
    parallel = make_model(think_tokens=4).encode(texts, convert_to_tensor=True)
    assert not torch.allclose(emb, parallel, atol=1e-3)


def test_recurrent_mode_batches_images_and_videos_like_single_rows(make_model, img84, video4):
    model = make_model(think_tokens=3, think_mode="recurrent")
    inputs = [{"text": "what", "image": img84}, "a short text only query here", {"text": "when", "video": video4}]
    batched = model.encode(inputs)
    single = np.stack([model.encode(x) for x in inputs])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_recurrent_mode_reuses_one_kv_cache(make_model, img84, video4):
    """The prompts (and their pixels) are encoded once; each think step is one new column over the cache."""
    model = make_model(think_tokens=3, think_mode="recurrent")
    widths, vision = [], []
    h1 = model.vlm.model.language_model.layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: widths.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
        with_kwargs=True)
    h2 = model.vlm.model.visual.register_forward_hook(lambda *_: vision.append(1))
    try:
        inputs = [{"text": "what", "image": img84}, "a short text", {"text": "when", "video": video4}]
        batch = model.make_batch([model.query_row(x) for x in inputs])
        with torch.no_grad():
            model(batch, cot_loss=False)
    finally:
        h1.remove(), h2.remove()
    prompt = int(batch.think_mask.float().argmax(-1).max())  # the longest prompt
    assert widths == [prompt, 1, 1, 1, 1]  # prompts, T_1..T_3, E
    assert len(vision) == 2  # one image and one video, each encoded once


def test_recurrent_mode_trains_the_cot_and_decodes(fresh_backbone, train_examples):
    model = TTEFlashModel(fresh_backbone(), TTEFlashConfig(think_tokens=2, think_mode="recurrent"))
    model.train()
    out = contrastive_step(model, train_examples[:2], TrainConfig(hard_negatives=1))
    out["loss"].backward()
    grads = [p.grad for p in model.vlm.model.language_model.parameters() if p.grad is not None]
    assert out["cot"].item() > 0 and grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    assert len(model.decode_thoughts(["count the red circles"], max_new_tokens=3)) == 1


def test_think_mode_is_validated():
    with pytest.raises(ValueError, match="think_mode"):
        TTEFlashConfig(think_mode="sequential")


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_detached_think_states_stop_the_embedding_gradient(fresh_backbone, mode):
    model = TTEFlashModel(fresh_backbone(), TTEFlashConfig(think_tokens=3, think_mode=mode))
    think_ids = model.processor._think_ids[:3]
    table = model.vlm.get_input_embeddings().weight
    rows = [model.query_row("count the red circles", "q"), model.query_row("sum the digits", "q")]
    batch = model.make_batch(rows)

    def grads(detach: bool):
        model.zero_grad(set_to_none=True)
        out = model(batch, detach_think=detach)
        out.embeddings.sum().backward()
        return out.embeddings.detach(), table.grad[think_ids].abs().sum().item(), table.grad.abs().sum().item()

    emb, think_grad, all_grad = grads(False)
    emb_d, think_grad_d, all_grad_d = grads(True)
    torch.testing.assert_close(emb, emb_d)  # the values are the same; only the gradient path differs
    if mode == "parallel":
        assert think_grad > 0  # the embedding reads the think tokens...
    assert think_grad_d == 0 and all_grad_d > 0  # ...but not through detached states; E and the query still train


def test_schedules_and_nested_budgets(fresh_backbone, train_examples):
    model = TTEFlashModel(fresh_backbone(), TTEFlashConfig(think_tokens=8))
    staged = TrainConfig(steps=10, schedule="staged", staged_cot_fraction=0.3, hard_negatives=1)
    assert [staged.cot_only(s) for s in (0, 2, 3, 9)] == [True, True, False, False]
    assert set(contrastive_step(model, train_examples[:2], staged, step=0)) == {"cot", "loss"}
    later = contrastive_step(model, train_examples[:2], staged, step=5)
    assert set(later) == {"contrastive", "loss"} and later["loss"] == later["contrastive"]
    detach = contrastive_step(model, train_examples[:2], TrainConfig(schedule="detach", cot_weight=0.5,
                                                                   hard_negatives=1))
    assert detach["loss"].item() == pytest.approx(detach["contrastive"].item() + 0.5 * detach["cot"].item(), rel=1e-5)
    with pytest.raises(ValueError, match="needs think tokens"):
        contrastive_step(TTEFlashModel(fresh_backbone(), TTEFlashConfig(think_tokens=0)), train_examples[:1],
                         TrainConfig(schedule="detach"))
    nested = TrainConfig(nested_think=True, seed=3)
    budgets = [nested.think_budget(s, 8) for s in range(200)]
    assert set(budgets) == {1, 2, 4, 8} and budgets == [nested.think_budget(s, 8) for s in range(200)]
    assert {nested.think_budget(s, 6) for s in range(100)} == {1, 2, 4, 6}
    assert TrainConfig().think_budget(5, 8) == 8 and nested.think_budget(0, 0) == 0


@pytest.mark.parametrize("every", [True, False])
def test_nested_training_uses_the_drawn_budget(fresh_backbone, train_examples, tmp_path, every):
    model = TTEFlashModel(fresh_backbone(), TTEFlashConfig(think_tokens=4))
    seen = []
    real = model.make_batch

    def spy(rows):
        seen.append({(r.think, r.budgets, r.cot_think) for r in rows})
        return real(rows)

    model.make_batch = spy
    cfg = TrainConfig(steps=6, batch_size=2, nested_think=True, nested_every_budget=every, hard_negatives=1,
                      checkpoint_every=100, seed=1)
    train(model, cfg, str(tmp_path), lambda s: train_examples[:2], progress=False)
    drawn = [cfg.think_budget(s, 4) for s in range(6)]
    assert len(set(drawn)) > 1
    if every:  # all 4 think tokens, E read at 1, 2 (and 4), the CoT at the drawn budget
        assert seen[0::2] == [{(4, (1, 2), k)} for k in drawn]
    else:
        assert seen[0::2] == [{(k, (), None)} for k in drawn]
    assert all(rows == {(0, (), None)} for rows in seen[1::2])  # targets carry no think tokens
    # one checkpoint serves every budget
    for k in (1, 2, 4):
        assert model.encode(["count the red circles"], think_tokens=k).shape == (1, TINY["hidden_size"])


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_budget_tokens_equal_reading_at_that_budget(make_model, img84, video4, mode):
    """E_k in the nested layout is the embedding of [query][T_1..T_k][E]; the CoT branch read at budget c is
    the branch of a row with c think tokens. So one pass trains exactly what encode(think_tokens=k) runs."""
    m = make_model(think_tokens=4, think_mode=mode)
    inputs = [{"text": "what", "image": img84}, "a short text only query", {"text": "when", "video": video4}]
    cot = "two red circles and one blue"
    with torch.no_grad():
        out = m(m.make_batch([m.query_row(x, cot=cot, train_cot=True, budgets=(1, 2), cot_think=2) for x in inputs]))
        assert out.budget_embeddings.shape == (3, 3, TINY["hidden_size"])
        torch.testing.assert_close(out.embeddings, out.budget_embeddings[:, -1])
        for j, k in enumerate((1, 2, 4)):
            alone = m(m.make_batch([m.query_row(x, think=k) for x in inputs])).embeddings
            torch.testing.assert_close(out.budget_embeddings[:, j], alone, atol=1e-5, rtol=0)
        assert not torch.allclose(out.budget_embeddings[:, 0], out.budget_embeddings[:, 2], atol=1e-3)
        branch_at_2 = m(m.make_batch([m.query_row(x, cot=cot, train_cot=True, think=2) for x in inputs]))
        torch.testing.assert_close(out.cot_token_loss, branch_at_2.cot_token_loss, atol=1e-5, rtol=0)
        # a row without think tokens (a target) in the same batch is untouched by the budget tokens
        doc = m(m.make_batch([m.query_row(inputs[1], cot=cot, train_cot=True, budgets=(1, 2)), m.document_row(img84)]))
        torch.testing.assert_close(doc.embeddings[1], m(m.make_batch([m.document_row(img84)])).embeddings[0],
                                   atol=1e-5, rtol=0)
        assert (doc.budget_embeddings[1, :2] == 0).all()
    for bad in (dict(budgets=(4,)), dict(budgets=(1, 1)), dict(budgets=(0,))):
        with pytest.raises(ValueError, match="distinct number of think tokens in 1..3"):
            m.make_batch([m.query_row("q", **bad)])
    with pytest.raises(ValueError, match="cannot read 5 of 4 think tokens"):
        m.make_batch([m.query_row("q", cot="c", train_cot=True, cot_think=5)])


def test_nested_contrastive_loss_is_the_mean_over_budgets(make_model, train_examples):
    model = make_model(think_tokens=4)
    examples = train_examples[:3]
    cfg = TrainConfig(nested_think=True, hard_negatives=1, cot_weight=0.0, temperature=0.1)
    with torch.no_grad():
        got = contrastive_step(model, examples, cfg)["contrastive"]
        keys, d_rows, positive = target_rows(model, examples, cfg)
        docs = model(model.make_batch(d_rows[:])).embeddings
        per_budget = [info_nce(model(model.make_batch([model.query_row(e.query, think=k) for e in examples])).embeddings,
                               docs, torch.tensor(positive), cfg.temperature) for k in (1, 2, 4)]
    assert float(got) == pytest.approx(float(sum(per_budget) / 3), rel=1e-5)
    assert len({round(float(x), 4) for x in per_budget}) == 3  # the budgets differ: the mean is not one of them
