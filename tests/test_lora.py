"""LoRA / DoRA training: only adapters and the project token rows train; the merged model saves and reloads."""
from __future__ import annotations

import sys

import pytest
import torch

from tteflash.model import TTEFlashModel
from tteflash.train.lora import apply_lora, project_token_ids
from tteflash.train.trainer import TrainConfig, train

pytest.importorskip("peft")


@pytest.fixture
def new_model(seeded_model):
    return lambda: seeded_model(11)


@pytest.fixture
def initial(seeded_model):
    return seeded_model(11).state_dict()


def _cfg(**kw):
    return TrainConfig(**{**dict(steps=2, batch_size=4, lr=1e-2, warmup_steps=1, log_every=1, hard_negatives=1,
                                 temperature=0.1, lora_rank=4, lora_alpha=8), **kw})


def test_only_adapters_and_project_token_rows_train(new_model):
    model = new_model()
    apply_lora(model, 4, 8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable), trainable
    assert any("q_proj.lora_A" in n for n in trainable) and any("down_proj.lora_B" in n for n in trainable)
    assert not any("visual" in n for n in trainable)


@pytest.mark.parametrize("dora", [False, True])
def test_lora_step_changes_only_projections_and_project_rows(new_model, initial, train_examples, tmp_path, dora):
    model = new_model()
    train(model, _cfg(lora_dora=dora), str(tmp_path), lambda s: train_examples[:4], progress=False)
    after = model.state_dict()
    assert after.keys() == initial.keys()  # merged: an ordinary state dict, no peft names
    changed = {k for k in initial if not torch.equal(after[k], initial[k])}
    projections = {k for k in initial if "language_model" in k and k.endswith("_proj.weight")}  # biases stay
    emb = "vlm.model.language_model.embed_tokens.weight"
    assert changed == projections | {emb} | ({"vlm.lm_head.weight"} if "vlm.lm_head.weight" in initial else set())
    rows = (after[emb] != initial[emb]).any(-1).nonzero().flatten().tolist()
    ids = project_token_ids(model)
    assert rows and set(rows) <= set(ids)
    assert model.processor.embed_token in rows  # E is in every row: its embedding learned


def test_merged_model_saves_and_reloads_with_identical_embeddings(new_model, train_examples, img56, tmp_path):
    model = new_model()
    train(model, _cfg(lora_dora=True), str(tmp_path / "run"), lambda s: train_examples[:4], progress=False)
    inputs = ["apple 7 , pear 2", {"image": img56, "text": "what is the sum"}]
    want = model.encode(inputs)
    model.save_pretrained(tmp_path / "model")
    again = TTEFlashModel.from_pretrained(str(tmp_path / "model"))
    torch.testing.assert_close(torch.as_tensor(again.encode(inputs)), torch.as_tensor(want), rtol=0, atol=1e-6)
    base = new_model().encode(inputs)
    assert not torch.allclose(torch.as_tensor(base), torch.as_tensor(want), atol=1e-4)  # the adapter did train


def test_lora_run_resumes_exactly(new_model, train_examples, tmp_path):
    data = lambda step: train_examples[step % 2 * 4:][:4]  # noqa: E731
    a = new_model()
    train(a, _cfg(steps=3), str(tmp_path / "a"), data, progress=False)
    train(new_model(), _cfg(steps=3), str(tmp_path / "b"), data, progress=False, stop_after=1)
    b = new_model()  # a new process: the adapter is injected again and loaded from the checkpoint
    train(b, _cfg(steps=3), str(tmp_path / "b"), data, progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-6, msg=k)


def test_missing_peft_names_the_extra(new_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(ImportError, match=r"tteflash\[train\]"):
        apply_lora(new_model(), 4, 8)
