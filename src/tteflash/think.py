"""How think-token states are computed, beyond the plain parallel pass.

The layout ([query][T_1..T_K][E][CoT branch], mask, positions) is built in `processing.build_batch`;
this file changes only what flows through the think positions of that same layout:

- recurrent think mode (Coconut-style): the input at think position i is the last hidden state of the
  position before it, not a learned embedding. Causal attention makes K passes enough: after pass j the
  first j think inputs are final, and a last pass over the whole layout (E, CoT branch) reads them.
- detached think states: the think positions' states are cut from the gradient at every layer, so a
  loss read at E (the contrastive one) trains the weights through the query and E only.

Both act through forward hooks on the backbone's input embeddings and decoder layers, so every backbone
that keeps its decoder layers in `language_model.layers` works unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

def _layers(vlm) -> list[torch.nn.Module]:
    return list(vlm.model.language_model.layers)


@contextmanager
def think_hooks(vlm, think_mask: torch.Tensor, think_inputs: torch.Tensor | None = None, detach: bool = False):
    """Within the block, backbone passes take `think_inputs` at think positions and/or detach their states.

    think_mask: (B, L) bool, True at think positions; think_inputs: (B, L, D), read where think_mask is True.
    """
    handles = []
    if think_inputs is not None or detach:
        def on_embeddings(module, args, out):
            if think_inputs is not None:
                out = torch.where(think_mask[..., None], think_inputs.to(out.dtype), out)
            return _detached(out, think_mask) if detach else out
        handles.append(vlm.get_input_embeddings().register_forward_hook(on_embeddings))
    if detach:
        def on_layer(module, args, out):
            if isinstance(out, tuple):
                return (_detached(out[0], think_mask), *out[1:])
            return _detached(out, think_mask)
        handles += [layer.register_forward_hook(on_layer) for layer in _layers(vlm)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _detached(h: torch.Tensor, think_mask: torch.Tensor) -> torch.Tensor:
    return torch.where(think_mask[..., None], h.detach(), h)


def recurrent_think_inputs(run, think_mask: torch.Tensor) -> torch.Tensor | None:
    """Think inputs for recurrent mode: `run(think_inputs)` is one backbone pass returning the last hidden
    states (B, L, D). K passes for K think tokens (the most in any row)."""
    k = int(think_mask.sum(-1).max()) if think_mask.numel() else 0
    if k == 0:
        return None
    feeds = think_mask[:, 1:]  # position p + 1 is a think token: its input is the state at p
    inputs = None
    for _ in range(k):
        h = run(inputs)
        nxt = torch.zeros_like(h)
        nxt[:, 1:][feeds] = h[:, :-1][feeds]
        inputs = nxt
    return inputs
