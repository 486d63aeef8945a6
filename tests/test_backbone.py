"""Backbone building, special tokens, loading and saving through transformers' own classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tteflash.backbone import (COT_END_TOKEN, COT_START_TOKEN, EMBED_TOKEN, PAD_TOKEN, VISION_TOKENS,
                               build_tiny_backbone, load_backbone, load_image_processor, project_tokens,
                               save_backbone, think_token, train_tiny_tokenizer)
from tteflash.config import TTEFlashConfig
from tteflash.model import TTEFlashModel

from conftest import TINY


def test_project_tokens():
    assert think_token(3) == "<|think_3|>"
    assert project_tokens(2) == [EMBED_TOKEN, COT_START_TOKEN, COT_END_TOKEN, "<|think_1|>", "<|think_2|>"]
    assert project_tokens(0) == [EMBED_TOKEN, COT_START_TOKEN, COT_END_TOKEN]


def test_tiny_tokenizer_specials_are_single_tokens(tokenizer):
    specials = [PAD_TOKEN, "<|im_start|>", "<|im_end|>", *VISION_TOKENS, *project_tokens(32)]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in specials]
    assert None not in ids and len(set(ids)) == len(specials)
    for t, i in zip(specials, ids):
        assert tokenizer(t, add_special_tokens=False)["input_ids"] == [i]
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids(think_token(33)) is None
    text = "count the red circles: 3 plus 4 is 7"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == " " + text  # the prefix space: one token form per word
    assert len(ids) < len(text)  # BPE merges learned from the corpus
    assert len(tokenizer) == 400


@pytest.mark.parametrize("hidden,heads", [(64, 2), (96, 2), (128, 4)])
def test_build_tiny_backbone_mrope_and_forward(tokenizer, hidden, heads):
    bb = build_tiny_backbone(tokenizer, hidden_size=hidden, layers=1, heads=heads, kv_heads=1,
                             intermediate_size=2 * hidden, vision_depth=1, vision_dim=32)
    cfg = bb.model.config
    head_dim = hidden // heads
    section = cfg.text_config.rope_parameters["mrope_section"]
    assert sum(section) == head_dim // 2 and len(section) == 3 and min(section) > 0
    assert cfg.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.text_config.vocab_size == len(tokenizer)
    assert bb.model.lm_head.weight.data_ptr() == bb.model.get_input_embeddings().weight.data_ptr()
    m = TTEFlashModel(bb, TTEFlashConfig(think_tokens=2))
    img = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    emb = m.encode(["hello", {"text": "what", "image": img}])
    assert emb.shape == (2, hidden) and np.isfinite(emb).all()


def test_build_tiny_backbone_is_seeded(tokenizer, backbone):
    again = build_tiny_backbone(tokenizer, seed=0, **TINY)
    other = build_tiny_backbone(tokenizer, seed=1, **TINY)
    sa, sb, so = backbone.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], so[k]) for k in sa)


def test_add_project_tokens_grows_the_vocabulary(tmp_path):
    corpus = ["a red circle", "two blue squares", "count the green triangles"] * 5
    tok = train_tiny_tokenizer(corpus, vocab_size=300, max_think_tokens=2)
    bb = build_tiny_backbone(tok, **TINY)
    n_before = len(tok)
    old = bb.model.get_input_embeddings().weight.detach().clone()
    m = TTEFlashModel(bb, TTEFlashConfig(think_tokens=4))
    assert len(tok) == n_before + 30 and m.processor.max_think_tokens == 32
    w = m.vlm.get_input_embeddings().weight.detach()
    assert w.shape == (len(tok), 64)
    assert torch.equal(w[:n_before], old)
    new = w[n_before:]
    assert torch.isfinite(new).all() and torch.cdist(new, new).add(torch.eye(30)).min() > 1e-3  # distinct rows
    # in-distribution: near the mean of the old rows
    assert (new - old.mean(0)).norm(dim=1).max() < 5 * (old - old.mean(0)).norm(dim=1).mean()
    assert m.vlm.lm_head.weight.shape[0] == len(tok)
    assert m.vlm.config.get_text_config().vocab_size == len(tok)
    emb = m.encode(["a red circle", "two blue squares"])
    m.save_pretrained(tmp_path)
    loaded = TTEFlashModel.from_pretrained(str(tmp_path))
    assert len(loaded.backbone.tokenizer) == len(tok)
    assert loaded.processor._think_ids == m.processor._think_ids
    np.testing.assert_allclose(loaded.encode(["a red circle", "two blue squares"]), emb, atol=1e-6)
    # nothing missing: a second wrapper does not grow it again
    TTEFlashModel(bb, TTEFlashConfig(think_tokens=8))
    assert len(tok) == n_before + 30


def test_save_and_load_backbone_roundtrip(backbone, tmp_path):
    save_backbone(backbone, tmp_path)
    loaded = load_backbone(str(tmp_path), dtype=torch.float32)
    ids = torch.tensor([[10, 50, 120, 7]])
    with torch.no_grad():
        a = backbone.model(input_ids=ids).logits
        b = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # digits, capitals and punctuation: Qwen2Tokenizer used to re-split these on load
    for text in ("count the red circles", "pear 5 and 12 apples. The sum is 17!", " 3+4=7\nrow 2: 40"):
        assert loaded.tokenizer(text)["input_ids"] == backbone.tokenizer(text)["input_ids"], text
    assert loaded.tokenizer.convert_tokens_to_ids(think_token(32)) == backbone.tokenizer.convert_tokens_to_ids(think_token(32))
    ip = load_image_processor(str(tmp_path))
    for attr in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std"):
        assert getattr(ip, attr) == getattr(backbone.image_processor, attr)
    img = np.random.default_rng(0).integers(0, 256, (100, 70, 3), dtype=np.uint8)
    torch.testing.assert_close(ip(images=[img], return_tensors="pt")["pixel_values"],
                               backbone.image_processor(images=[img], return_tensors="pt")["pixel_values"])


def test_committed_base_tokenizes_like_its_training_tokenizer():
    """The base's weights were trained with the in-memory tokenizer; the saved one must agree with it."""
    from itertools import islice

    from tteflash.data import bench
    from tteflash.train.base import BASE_VOCAB_SIZE

    trained = train_tiny_tokenizer(bench.corpus_texts(), vocab_size=BASE_VOCAB_SIZE, max_think_tokens=32)
    loaded = load_backbone(str(Path(__file__).parents[1] / "checkpoints" / "base"), dtype=torch.float32).tokenizer
    assert loaded.get_vocab() == trained.get_vocab()
    for text in islice(bench.corpus_texts(), 0, None, 7):
        assert loaded(text)["input_ids"] == trained(text)["input_ids"], text


def test_load_backbone_rejects_text_only_models(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'qwen2' model, not a vision-language model"):
        load_backbone(str(tmp_path))
