"""Gradient checkpointing gives the same gradients; mixed-precision settings are checked up front."""
from __future__ import annotations

import pytest
import torch

from tteflash.config import TTEFlashConfig
from tteflash.model import TTEFlashModel
from tteflash.train import precision
from tteflash.train.trainer import TrainConfig, contrastive_step, set_activation_checkpointing, train


def _model(fresh_backbone):
    m = TTEFlashModel(fresh_backbone(seed=7), TTEFlashConfig(think_tokens=4))
    m.train()
    return m


def _step_grads(model, examples, cfg) -> dict:
    contrastive_step(model, examples, cfg)["loss"].backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("schedule", ["joint", "detach"])  # detach: the think hooks inside checkpointed layers
def test_gradient_checkpointing_gives_the_same_gradients(fresh_backbone, train_examples, schedule):
    cfg = TrainConfig(hard_negatives=1, temperature=0.1, schedule=schedule)
    want = _step_grads(_model(fresh_backbone), train_examples[:5], cfg)
    model = _model(fresh_backbone)
    set_activation_checkpointing(model.vlm, True)
    assert model.vlm.model.language_model.gradient_checkpointing
    # a checkpointed layer runs again in the backward pass. Counted on an instance `forward` inside the layer:
    # module hooks do not fire during the recomputation.
    mlp = model.vlm.model.language_model.layers[0].mlp
    calls, forward = [], mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    got = _step_grads(model, train_examples[:5], cfg)
    del mlp.forward
    passes = {"joint": 2, "detach": 3}[schedule]  # query pass(es) + the target pass
    assert len(calls) == 2 * passes, calls
    assert got.keys() == want.keys() and want
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7, msg=n)


def test_train_with_checkpointing_turns_it_off_afterwards(fresh_backbone, train_examples, tmp_path):
    model = _model(fresh_backbone)
    cfg = TrainConfig(steps=1, batch_size=4, hard_negatives=1, gradient_checkpointing=True, warmup_steps=1)
    hist = train(model, cfg, str(tmp_path), lambda s: train_examples[:4], progress=False)
    assert hist["step"] == 1 and hist["history"][0]["loss"] > 0
    assert not model.vlm.model.language_model.gradient_checkpointing  # encode runs without it


def test_precision_settings_are_checked(fresh_backbone, train_examples, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="autocasts on CUDA only"):
        train(_model(fresh_backbone), TrainConfig(steps=1, precision="bf16"), str(tmp_path),
              lambda s: train_examples[:2], progress=False)
    cpu = torch.device("cpu")
    assert not precision.grad_scaler("fp32", cpu).is_enabled()
    with precision.autocast("fp32", cpu):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast training runs on CUDA")
@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(fresh_backbone, train_examples, tmp_path, prec):
    model = _model(fresh_backbone).to("cuda")
    cfg = TrainConfig(steps=3, batch_size=4, hard_negatives=1, precision=prec, warmup_steps=1, lr=3e-3)
    hist = train(model, cfg, str(tmp_path), lambda s: train_examples[:4], progress=False)
    losses = [h["loss"] for h in hist["history"]]
    assert all(torch.isfinite(torch.tensor(losses))) and model.dtype == torch.float32
