"""Mixed-precision training: autocast on CUDA (bf16, or fp16 with a gradient scaler); CPU trains in float32."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: str, device: torch.device) -> None:
    """A precision TrainConfig accepted, against the model's device."""
    if PRECISIONS[precision] is not None and device.type != "cuda":
        raise ValueError(f"precision {precision!r} autocasts on CUDA only; the model is on {device.type} "
                         "(use precision='fp32')")


def autocast(precision: str, device: torch.device):
    """The forward's autocast context (a no-op for fp32). Backward passes run outside it."""
    dtype = PRECISIONS[precision]
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 get a disabled (pass-through) scaler."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
