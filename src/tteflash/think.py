"""How think-token states are computed, beyond the plain parallel pass.

The layout ([query][T_1..T_K][E][budget tokens E_k][CoT branch], mask, positions) is built in
`processing.build_batch`; this file changes only what flows through the think positions of that layout:

- recurrent think mode (Coconut-style): the input at think position i is the last hidden state of the
  position before it, not a learned embedding. One KV cache: the prompts once, then one column per think
  token, then the rest of the layout (E, budget tokens, CoT branch).
- detached think states: the think positions' states are cut from the gradient at every layer, so a
  loss read at E (the contrastive one) trains the weights through the query and E only.

Both act through forward hooks on the backbone's input embeddings and decoder layers, so every backbone
that keeps its decoder layers in `language_model.layers` works unchanged.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from functools import cache

import torch
from transformers import DynamicCache

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


@cache
def _cache_kwarg(model_class) -> str:
    """The KV-cache argument's name: `cache` from transformers 5.24, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def recurrent_pass(vlm, batch, *, detach: bool = False, layer: torch.nn.Module | None = None):
    """Recurrent (Coconut-style) think tokens over one KV cache: a pass over the prompts, then K one-column
    steps, each fed the last hidden state of the column before it, then a pass over the rest (E, budget
    tokens, CoT branch).

    Rows are first shifted so that their think tokens share columns (prompts padded on the left); the
    layout's mask and positions travel with the tokens, so attention is that of the batch's own layout.
    Returns (last hidden states, hidden states entering `layer` or None), both (B, L, D) in the batch's
    own column order. The prompts' images and videos are encoded once, by the first pass.
    """
    think = batch.think_mask
    B, L = think.shape
    valid = batch.padding_mask.bool()
    lengths = valid.sum(-1)
    cols = torch.arange(L, device=think.device)
    first_think = torch.where(think, cols, L).amin(-1).minimum(lengths)  # a row without think tokens: its end
    P = int(first_think.max())
    K = int(think.sum(-1).max())
    shift = P - first_think
    width = int((shift + lengths).max())
    # src[b, j]: the batch column shown at aligned column j; L (one appended padding column) outside the row
    j = torch.arange(width, device=think.device)[None] - shift[:, None]
    src = torch.where((j >= 0) & (j < lengths[:, None]), j, L)

    def aligned(x, fill):  # gather along the last (column) dim after appending one padding column
        x = torch.cat([x, x.new_full((*x.shape[:-1], 1), fill)], -1)
        return x.gather(-1, src if x.dim() == 2 else src.expand(x.shape[0], -1, -1))

    ids = aligned(batch.input_ids, 0)  # any id: padding is masked
    think_a = aligned(think, False)
    positions = aligned(batch.position_ids, 0)
    neg = torch.finfo(batch.attention_mask.dtype).min
    m = batch.attention_mask[:, 0]
    m = torch.cat([m, m.new_full((B, L, 1), neg)], 2)
    m = torch.cat([m, m.new_full((B, 1, L + 1), neg)], 1)
    m[:, L, L] = 0  # the padding column attends to itself: no all-masked row
    m = m.gather(1, src[:, :, None].expand(-1, -1, L + 1)).gather(2, src[:, None, :].expand(-1, width, -1))
    mask = m[:, None]

    kv = DynamicCache()
    pixels = {k: v for k, v in batch.model_inputs().items() if k.startswith(("pixel_values", "image_", "video_"))}
    seen = []
    handle = layer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    ) if layer is not None else None

    def run(a: int, b: int, fed: torch.Tensor | None = None, **extra) -> torch.Tensor:
        tm = think_a[:, a:b]
        inputs = None if fed is None else fed.expand(-1, b - a, -1)
        with think_hooks(vlm, tm, inputs, detach):
            return vlm.model(input_ids=ids[:, a:b], attention_mask=mask[:, :, a:b, :b],
                             position_ids=positions[:, :, a:b], use_cache=True, **{_cache_kwarg(type(vlm.model)): kv},
                             **extra).last_hidden_state

    try:
        states = [run(0, P, **pixels)] if P else []
        for c in range(P, P + K):
            states.append(run(c, c + 1, fed=states[-1][:, -1:]))
        if P + K < width:
            states.append(run(P + K, width))
    finally:
        if handle is not None:
            handle.remove()
    # back to the batch's columns (padding columns read an arbitrary aligned column: never used)
    dst = (cols[None] + shift[:, None]).clamp(max=width - 1)[..., None]

    def restore(chunks):
        h = torch.cat(chunks, 1)
        return h.gather(1, dst.expand(-1, -1, h.shape[-1]))

    return restore(states), (restore(seen) if layer is not None else None)
