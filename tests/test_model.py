"""TTEFlashModel: attention layout end to end, K=0 baseline, mixed batches, save/load, hub path, decoding."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tteflash.backbone import save_backbone
from tteflash.config import TTEFlashConfig
from tteflash.model import CONFIG_NAME, TTEFlashModel

COT = "digits 7 2 . 7 plus 2 is 9"


# ----------------------------------------------------------------------------- 1. attention layout
@pytest.mark.parametrize("sees_query", [False, True])
def test_branch_cot_does_not_change_embedding(make_model, img84, sees_query):
    m = make_model(think_tokens=8, cot_sees_query=sees_query)
    queries = ["count the red circles", {"text": "what is shown", "image": img84}]
    with torch.no_grad():
        for q in queries:
            with_cot = m(m.make_batch([m.query_row(q, cot=COT, train_cot=True)]))
            without = m(m.make_batch([m.query_row(q)]))
            assert with_cot.cot_loss is not None and without.cot_loss is None
            assert with_cot.cot_token_loss.shape == (len(m.processor.cot_ids(COT)),)
            assert torch.isfinite(with_cot.cot_loss) and with_cot.cot_loss > 0
            torch.testing.assert_close(with_cot.embeddings, without.embeddings, atol=1e-5, rtol=0)
        # also inside a padded batch next to rows of other lengths
        rows = [m.query_row(queries[0], cot=COT, train_cot=True), m.query_row(queries[1]),
                m.query_row("a much longer query text that pads the other rows of the batch " * 2)]
        batch_emb = m(m.make_batch(rows)).embeddings
        alone = m(m.make_batch([m.query_row(queries[0])])).embeddings
        torch.testing.assert_close(batch_emb[0], alone[0], atol=1e-5, rtol=0)


def test_cot_loss_has_no_gradient_through_embedding_token(model8, no_grad_leak):
    """d cot_loss / d (input embedding at E) is exactly 0; think tokens do get gradient.

    The lm_head is tied to the input embeddings, so the E row of the *weight* gets gradient from
    the output softmax; the test therefore measures the gradient at E's input position.
    """
    m = model8
    rows = [m.query_row("count the red circles", cot=COT, train_cot=True),
            m.query_row("a blue square next to a green one", cot="blue square", train_cot=True)]
    batch = m.make_batch(rows)
    captured = {}

    def hook(module, inputs, output):
        output.retain_grad()
        captured["embeds"] = output

    handle = m.vlm.get_input_embeddings().register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = m(batch)
            out.cot_loss.backward()
    finally:
        handle.remove()
    grad = captured["embeds"].grad  # (B, L, D)
    for b, row in enumerate(rows):
        e = int(batch.embed_index[b])
        assert torch.count_nonzero(grad[b, e]) == 0
        think = grad[b, e - 8:e].abs().sum(-1)
        assert (think > 0).all(), think
        # bottleneck: the prompt still gets gradient, through the think tokens
        assert grad[b, : len(row.prompt)].abs().sum() > 0


@pytest.mark.parametrize("with_image", [False, True])
def test_masked_pass_equals_plain_run_without_e(make_model, img84, with_image):
    """[prompt][T][E][CoT] with E hidden from the CoT == a plain causal run of [prompt][T][CoT]."""
    m = make_model(think_tokens=8, cot_sees_query=True)
    q = {"text": "what is shown", "image": img84} if with_image else "count the red circles"
    batch = m.make_batch([m.query_row(q, cot=COT, train_cot=True)])
    e = int(batch.embed_index[0])
    L = batch.input_ids.shape[1]
    keep = torch.tensor([i for i in range(L) if i != e])
    with torch.no_grad():
        masked = m.vlm.model(**batch.model_inputs(), use_cache=False).last_hidden_state[0]
        kw = dict(input_ids=batch.input_ids[:, keep], use_cache=False)
        if with_image:  # the backbone computes its own M-RoPE positions; plain causal mask
            kw.update(pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                      mm_token_type_ids=batch.mm_token_type_ids[:, keep])
        plain = m.vlm.model(**kw).last_hidden_state[0]
    branch = torch.arange(e + 1, L)
    assert len(branch) == len(m.processor.cot_ids(COT))
    torch.testing.assert_close(masked[branch], plain[branch - 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(masked[keep], plain, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- 3. K = 0
def test_k0_is_the_no_think_path(model0, model8, img84, video4):
    inputs = ["a red circle", {"text": "what is this", "image": img84}, {"video": video4, "text": "sum"}, img84]
    q0 = model0.encode(inputs, role="query")
    d0 = model0.encode(inputs, role="document")
    q8_as_0 = model8.encode(inputs, think_tokens=0)
    q8 = model8.encode(inputs)
    np.testing.assert_allclose(q0, d0, atol=1e-6, rtol=0)
    np.testing.assert_allclose(q8_as_0, q0, atol=1e-6, rtol=0)
    assert np.abs(q8 - q0).max() > 1e-3  # think tokens do change the query embedding
    row = model0.query_row("a red circle")
    assert row.think == 0 and model0.make_batch([row]).input_ids[0, -1] == model0.processor.embed_token
    assert model0.config.method == "no_think" and model8.config.method == "tte_flash"


def test_think_on_targets_and_fewer_think_tokens(make_model, model8, img84):
    m = make_model(think_tokens=8, think_on_targets=True)
    x = [{"text": "what is this", "image": img84}, "a red circle"]
    np.testing.assert_allclose(m.encode(x, role="document"), model8.encode(x), atol=1e-6, rtol=0)
    # a checkpoint with K_max think tokens serves K < K_max: the first K tokens
    m4 = make_model(think_tokens=4)
    np.testing.assert_allclose(model8.encode(x, think_tokens=4), m4.encode(x), atol=1e-6, rtol=0)


def test_embed_layer_selects_hidden_state(make_model, model8):
    m0 = make_model(think_tokens=8, embed_layer=0)  # layer 0 = the input embedding of E
    w = model8.vlm.get_input_embeddings().weight[model8.processor.embed_token]
    np.testing.assert_allclose(m0.encode("a red circle"), F.normalize(w, dim=-1).detach().numpy(), atol=1e-6)
    m_last = make_model(think_tokens=8, embed_layer=2)  # 2 layers: index 2 is the final (normed) state
    np.testing.assert_allclose(m_last.encode("a red circle"), model8.encode("a red circle"), atol=1e-6)
    m1 = make_model(think_tokens=8, embed_layer=1)
    assert np.abs(m1.encode("a red circle") - model8.encode("a red circle")).max() > 1e-3


def test_config_validation(backbone):
    with pytest.raises(ValueError, match="think_tokens must be >= 0"):
        TTEFlashConfig(think_tokens=-1)
    with pytest.raises(ValueError, match="explicit_cot"):
        TTEFlashConfig(think_tokens=4, explicit_cot=True)
    cfg = TTEFlashConfig.from_dict({"think_tokens": 3, "unknown": 1, "cot_sees_query": True})
    assert (cfg.think_tokens, cfg.cot_sees_query, cfg.max_text_tokens) == (3, True, 512)
    assert TTEFlashConfig.from_dict(json.loads(cfg.to_json())) == cfg


# ----------------------------------------------------------------------------- 7. mixed batch
def test_mixed_batch_rows_equal_encoding_alone(model8, img84, img100x70, video4):
    inputs = ["a red circle",
              {"text": "what is shown", "image": img84},
              {"video": video4, "text": "sum the first and last digit"},
              img100x70,
              {"text": "a much longer piece of text so that the other rows need padding " * 2},
              {"video": video4[:2]}]
    for role in ("query", "document"):
        emb = model8.encode(inputs, batch_size=16, role=role)
        assert emb.shape == (len(inputs), 64) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        alone = np.stack([model8.encode(x, role=role) for x in inputs])
        np.testing.assert_allclose(emb, alone, atol=1e-4, rtol=0)
        assert np.abs(emb[1] - emb[3]).max() > 1e-3  # different inputs, different vectors
    # batch_size splits give the same result
    np.testing.assert_allclose(model8.encode(inputs, batch_size=4), model8.encode(inputs, batch_size=16), atol=1e-4)
    t = model8.encode(inputs[:2], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 64)
    sim = TTEFlashModel.similarity(emb[:2], emb[:3])
    np.testing.assert_allclose(sim.numpy(), emb[:2] @ emb[:3].T, atol=1e-5)


# ----------------------------------------------------------------------------- 6 / 8. save, load, hub
def test_save_load_roundtrip(model8, img84, video4, tmp_path):
    inputs = ["a red circle", {"text": "what is shown", "image": img84}, {"video": video4}]
    before = model8.encode(inputs)
    model8.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", CONFIG_NAME,
            "tokenizer.json", "tokenizer_config.json"} <= files
    assert json.load(open(tmp_path / CONFIG_NAME))["think_tokens"] == 8
    loaded = TTEFlashModel.from_pretrained(str(tmp_path))
    assert loaded.config == model8.config
    assert loaded.processor.vision == model8.processor.vision
    assert loaded.processor._think_ids == model8.processor._think_ids
    assert loaded.vlm.get_input_embeddings().weight.shape == model8.vlm.get_input_embeddings().weight.shape
    np.testing.assert_allclose(loaded.encode(inputs), before, atol=1e-6, rtol=0)
    np.testing.assert_allclose(loaded.encode(inputs, role="document"), model8.encode(inputs, role="document"),
                               atol=1e-6, rtol=0)
    # a dict overrides saved settings; a TTEFlashConfig replaces them
    over = TTEFlashModel.from_pretrained(str(tmp_path), {"think_tokens": 4})
    assert over.config.think_tokens == 4 and over.config.max_text_tokens == 512
    np.testing.assert_allclose(over.encode(inputs[:1]), model8.encode(inputs[:1], think_tokens=4), atol=1e-6)


def test_plain_backbone_directory_loads_with_defaults(backbone, tmp_path):
    save_backbone(backbone, tmp_path)
    assert not (tmp_path / CONFIG_NAME).exists()
    m = TTEFlashModel.from_pretrained(str(tmp_path), {"think_tokens": 2})
    assert m.config == TTEFlashConfig(think_tokens=2)
    ref = TTEFlashModel(backbone, TTEFlashConfig(think_tokens=2))
    np.testing.assert_allclose(m.encode("hello"), ref.encode("hello"), atol=1e-6)


def test_local_dir_and_hub_id_share_the_loading_path(model8, tmp_path, monkeypatch):
    import huggingface_hub.constants
    import transformers.utils

    import tteflash.model as M

    calls = {"cached_file": [], "load_backbone": []}
    real_cached, real_load = transformers.utils.cached_file, M.load_backbone

    def cached(name, *a, **k):
        calls["cached_file"].append(str(name))
        return real_cached(name, *a, **k)

    def load(name, **k):
        calls["load_backbone"].append(str(name))
        return real_load(name, **k)

    monkeypatch.setattr(transformers.utils, "cached_file", cached)
    monkeypatch.setattr(M, "load_backbone", load)
    model8.save_pretrained(tmp_path)
    TTEFlashModel.from_pretrained(str(tmp_path))
    assert calls == {"cached_file": [str(tmp_path)], "load_backbone": [str(tmp_path)]}

    # a hub id goes through the same calls; offline, the hub code raises an OSError (not AttributeError etc.)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_id = "tteflash-tests/no-such-model"
    with pytest.raises(OSError):
        TTEFlashModel.from_pretrained(hub_id)
    assert calls["cached_file"][-1] == hub_id
    # a hub repo without tteflash_config.json (a base Qwen-VL): load_backbone gets the hub id
    monkeypatch.setattr(transformers.utils, "cached_file", lambda name, *a, **k: calls["cached_file"].append(name))
    with pytest.raises(OSError):
        TTEFlashModel.from_pretrained(hub_id, {"think_tokens": 4})
    assert calls["load_backbone"][-1] == hub_id


# ----------------------------------------------------------------------------- 12. decoding
def test_decode_thoughts_and_generate_cot_smoke(model8, make_model, img84):
    xs = ["count the red circles", {"text": "what is shown", "image": img84}, img84]
    thoughts = model8.decode_thoughts(xs, max_new_tokens=2)
    assert isinstance(thoughts, list) and len(thoughts) == 3 and all(isinstance(t, str) for t in thoughts)
    assert len(model8.decode_thoughts("hello", think_tokens=2, max_new_tokens=1)) == 1
    with pytest.raises(ValueError, match="think tokens"):
        model8.decode_thoughts(xs, think_tokens=0)
    mx = make_model(think_tokens=0, explicit_cot=True)
    cots = mx.generate_cot(xs, max_new_tokens=2)
    assert isinstance(cots, list) and len(cots) == 3 and all(isinstance(t, str) for t in cots)


@pytest.fixture(scope="module")
def spiky_backbone(backbone):
    """The tiny backbone with large random weights: greedy decoding then emits varied tokens."""
    bb = copy.deepcopy(backbone)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bb.model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return bb


def _recording(model):
    seen = []
    real = model._decode
    model._decode = lambda ids: (seen.append(list(ids)), real(ids))[1]
    return seen


def _teacher_forced_argmax(model, rows):
    batch = model.make_batch(rows)
    with torch.no_grad():
        h = model.vlm.model(**batch.model_inputs(), use_cache=False).last_hidden_state
        logits = model.vlm.lm_head(h[batch.cot_predict[:, 0], batch.cot_predict[:, 1]])
    logits[:, model.processor.never_generated] = float("-inf")  # generation never emits these
    return logits.argmax(-1), batch.cot_rows


def test_decode_thoughts_follows_the_trained_branch(spiky_backbone, img84):
    """Greedy thoughts == argmax of the CoT-loss logits teacher-forced on them (same mask, positions)."""
    m = TTEFlashModel(spiky_backbone, TTEFlashConfig(think_tokens=8))
    seen = _recording(m)
    xs = ["count the red circles", {"text": "what is shown", "image": img84}]
    m.decode_thoughts(xs, max_new_tokens=4)
    assert len(seen) == 2 and all(len(s) >= 1 for s in seen)
    assert len({t for s in seen for t in s}) > 2  # not a degenerate constant model
    rows = []
    for x, ids in zip(xs, seen):
        r = m.processor.prompt_row(x)
        r.think, r.branch_cot = 8, ids  # the training layout, with E present
        rows.append(r)
    pred, which = _teacher_forced_argmax(m, rows)
    for b, ids in enumerate(seen):
        assert pred[which == b].tolist() == ids


def test_generate_cot_follows_the_trained_inline_cot(spiky_backbone, img84):
    """Batched KV-cache generation (left padded) == argmax of the inline-CoT NLL logits."""
    m = TTEFlashModel(spiky_backbone, TTEFlashConfig(think_tokens=0, explicit_cot=True))
    seen = _recording(m)
    xs = ["count the red circles and then some more words", {"text": "what", "image": img84}, "hi"]
    texts = m.generate_cot(xs, max_new_tokens=4)
    assert len(texts) == 3 and len(seen) == 3
    rows = []
    for x, ids in zip(xs, seen):
        r = m.processor.prompt_row(x)
        r.inline_cot = ids
        rows.append(r)
    pred, which = _teacher_forced_argmax(m, rows)
    for b, ids in enumerate(seen):
        gen = ids[:-1] if ids[-1] == m.processor.cot_end else ids  # <|/cot|> is appended when cut off
        assert pred[which == b].tolist()[: len(gen)] == gen
    assert len({t for s in seen for t in s}) > 2


@pytest.fixture(scope="module")
def vision_pad_backbone(backbone, img84):
    """A backbone whose greedy next token is always <|image_pad|> (its tied output row is made huge
    along the mean final hidden state), standing in for a model that emits a vision placeholder."""
    bb = copy.deepcopy(backbone)
    m = TTEFlashModel(bb, TTEFlashConfig(think_tokens=4))
    m.eval()
    with torch.no_grad():
        b = m.make_batch([m.query_row(x) for x in ["hello", {"text": "what", "image": img84}]])
        h = m.vlm.model(**b.model_inputs(), use_cache=False).last_hidden_state.reshape(-1, 64)
        d = h.mean(0)
        bb.model.get_input_embeddings().weight[m.processor.image_token] = d / d.norm() * 30
    return bb


def test_decode_thoughts_never_emits_vision_placeholders(vision_pad_backbone, img84):
    m = TTEFlashModel(vision_pad_backbone, TTEFlashConfig(think_tokens=4))
    out = m.decode_thoughts([{"text": "what", "image": img84}], max_new_tokens=3)
    assert len(out) == 1


def test_explicit_cot_encode_survives_generated_placeholders(vision_pad_backbone, img84):
    m = TTEFlashModel(vision_pad_backbone, TTEFlashConfig(think_tokens=0, explicit_cot=True, max_cot_tokens=3))
    emb = m.encode(["hello", {"text": "what", "image": img84}])
    assert emb.shape == (2, 64)


def test_explicit_cot_encode_uses_gold_cot(make_model):
    m = make_model(think_tokens=0, explicit_cot=True)
    xs, cots = ["count the red circles", "a blue square"], ["three red", "one blue"]
    emb = m.encode(xs, cot=cots)
    with torch.no_grad():
        ref = m(m.make_batch([m.query_row(x, cot=c) for x, c in zip(xs, cots)])).embeddings.numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-6)
    assert np.abs(emb - m.encode(xs, role="document")).max() > 1e-3
    with pytest.raises(ValueError, match="got 1 CoTs for 2 inputs"):
        m.encode(xs, cot=["x"])
