"""The fast encode path (length buckets, prefetch threads, 2-D causal mask, early stop, no LM head) gives the
embeddings of the plain path: each input alone, the training layout's 4-D mask, every layer, the hidden state
read from transformers' own `hidden_states`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tteflash.config import TTEFlashConfig
from tteflash.processing import InputError
from tteflash.think import think_hooks

from test_families import qwen2_5_vl_model, qwen3_vl_model

COTS = ["three red", "digits 7 2 . 7 plus 2 is 9", "one", "the square is blue so the answer is the circle", "x", "y"]


@pytest.fixture(scope="module")
def inputs(img84, img56, img100x70, video4):
    # deliberately not in length order, so that bucketing reorders them
    return ["a red circle",
            {"text": "what is shown", "image": img84},
            {"video": video4, "text": "sum the first and last digit"},
            "a much longer piece of text so that the other rows need padding " * 3,
            img100x70,
            {"video": video4[:2]},
            {"text": "which colour", "image": img56}]


def plain(model, row) -> torch.Tensor:
    """One row alone through the plain path: 4-D layout mask, all layers, `hidden_states[embed_layer]`."""
    batch = model.make_batch([row])
    batch.causal = False  # the training layout's 4-D mask

    def run(think_inputs, **kw):
        with think_hooks(model.vlm, batch.think_mask, think_inputs):
            return model.vlm.model(**batch.model_inputs(), use_cache=False, **kw)

    think = None
    if model.config.think_mode == "recurrent":  # no cache: K full passes, the j-th fixing think input j
        feeds = batch.think_mask[:, 1:]
        for _ in range(int(batch.think_mask.sum(-1).max())):
            h = run(think).last_hidden_state
            think = torch.zeros_like(h)
            think[:, 1:][feeds] = h[:, :-1][feeds]
    h = run(think, output_hidden_states=True).hidden_states[model.config.embed_layer]
    return F.normalize(h[0, batch.embed_index[0]], dim=-1)


CONFIGS = {
    "no_think": dict(think_tokens=0),
    "tte_flash_k8": dict(think_tokens=8),
    "recurrent_k4": dict(think_tokens=4, think_mode="recurrent"),
    "embed_layer_1": dict(think_tokens=8, embed_layer=1),
    "recurrent_embed_layer_1": dict(think_tokens=3, think_mode="recurrent", embed_layer=1),
    "explicit_cot_gold": dict(think_tokens=0, explicit_cot=True),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("role", ["query", "document"])
def test_fast_path_equals_plain_path(make_model, inputs, name, role):
    m = make_model(**CONFIGS[name])
    cots = COTS[:len(inputs)] + ["z"] * (len(inputs) - len(COTS)) if m.config.explicit_cot and role == "query" else None
    lengths = [m.processor.estimate_length(x) for x in inputs]
    assert sorted(lengths, reverse=True) != lengths  # the buckets do reorder
    fast = m.encode(inputs, batch_size=3, role=role, cot=cots, convert_to_tensor=True)  # 3 batches: threads on
    with torch.no_grad():
        for i, x in enumerate(inputs):
            row = m.document_row(x) if role == "document" else m.query_row(x, cot=cots[i] if cots else None)
            torch.testing.assert_close(fast[i], plain(m, row), atol=1e-5, rtol=0)
    # one call per input and one call for all agree too (order kept, any batch size)
    np.testing.assert_allclose(m.encode(inputs, batch_size=32, role=role, cot=cots), fast.numpy(), atol=1e-5, rtol=0)


def test_think_budget_below_k(make_model, inputs):
    m = make_model(think_tokens=8)
    fast = m.encode(inputs, batch_size=2, think_tokens=4, convert_to_tensor=True, num_workers=2)
    with torch.no_grad():
        for i, x in enumerate(inputs):
            torch.testing.assert_close(fast[i], plain(m, m.query_row(x, think=4)), atol=1e-5, rtol=0)


def _count_calls(module):
    calls = []
    return module.register_forward_hook(lambda *_: calls.append(1)), calls


def test_no_lm_head_and_early_stop(make_model, inputs):
    m = make_model(think_tokens=0, explicit_cot=True, embed_layer=1)
    last_layer = m.vlm.model.language_model.layers[-1]
    (h_head, head), (h_last, last) = _count_calls(m.vlm.lm_head), _count_calls(last_layer)
    try:
        m.encode(inputs[:3], cot=COTS[:3])  # gold CoT: labelled tokens in the batch, still no LM head
        assert head == [] and last == []  # the last layer is above embed_layer=1: skipped
        r = make_model(think_tokens=3, think_mode="recurrent", embed_layer=1)
        r.encode(["a red circle", "count the squares"])
        assert len(last) == 5  # fed-back states are last-layer states: prompt, 3 think steps, E all run it
    finally:
        h_head.remove(), h_last.remove()


def test_training_forward_still_reads_every_layer(make_model):
    """With a CoT loss the forward needs the last layer (LM head) even for an intermediate embed_layer."""
    m = make_model(think_tokens=8, embed_layer=1)
    row = m.query_row("count the red circles", cot="three red", train_cot=True)
    with torch.no_grad():
        out = m(m.make_batch([row]))
    assert out.cot_loss is not None and torch.isfinite(out.cot_loss)
    torch.testing.assert_close(out.embeddings[0], plain(m, m.query_row("count the red circles")), atol=1e-5, rtol=0)


@pytest.mark.parametrize("build", [qwen2_5_vl_model, qwen3_vl_model])
def test_early_stop_in_other_families(tokenizer, img84, build):
    m = build(tokenizer, TTEFlashConfig(think_tokens=4, embed_layer=1))
    m.eval()
    xs = [{"text": "what is shown", "image": img84}, "a text", "a longer text query with more words in it"]
    fast = m.encode(xs, batch_size=2, convert_to_tensor=True)
    with torch.no_grad():
        for i, x in enumerate(xs):
            torch.testing.assert_close(fast[i], plain(m, m.query_row(x)), atol=1e-5, rtol=0)


def test_errors_name_the_input_in_sorted_order(model8, make_model, img84):
    xs = ["a red circle", {"text": "what", "image": img84}, {"text": "   "}, "another query"]
    assert model8.processor.estimate_length(xs[2]) == 0 and model8.processor.estimate_length(42) == 0
    with pytest.raises(InputError, match="input 2: text is blank"):
        model8.encode(xs, batch_size=1)
    with pytest.raises(ValueError, match="precision"):
        model8.encode(xs[:1], precision="int8")
    with pytest.raises(ValueError, match="embed_layer 5 is out of range"):
        make_model(embed_layer=5).encode(xs[:1])
    assert model8.encode([]).shape == (0, 64)


@pytest.mark.slow
def test_compiled_layers_give_the_same_embeddings_and_stay_scoped(make_model, inputs):
    m = make_model(think_tokens=8, embed_layer=1)
    eager = m.encode(inputs, batch_size=3)
    np.testing.assert_allclose(m.encode(inputs, batch_size=3, compile=True), eager, atol=1e-5, rtol=0)
    layer = m.vlm.model.language_model.layers[0]
    assert "forward" not in vars(layer) and "_tteflash_compiled" in vars(layer)  # eager again after the call
