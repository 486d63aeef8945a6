"""GradCache: a contrastive batch far larger than one forward fits in memory, `chunk` rows at a time.

InfoNCE couples every query with every target, so the batch cannot simply be split into accumulated
micro-batches (each would see only its own negatives). GradCache (Gao et al., 2021) keeps the loss exact:

(a) encode every query chunk and every target chunk without a graph: only the embeddings are kept;
(b) compute the loss on the full embedding matrices (leaf copies) and backpropagate it to them, giving
    d loss / d embedding for every row;
(c) per chunk, encode again with a graph (the RNG state of pass (a) restored, so dropout draws the same
    masks) and backpropagate the surrogate sum(embedding * cached gradient), plus, for query chunks, the
    chunk's CoT tokens' share of the CoT loss (the mean over all CoT tokens of the batch).

The parameter gradients equal one forward of the whole batch (`steps.contrastive_step`, then backward),
for every schedule and nested think budget, in one process and under DDP (no gradient synchronisation
until the last chunk; one forward per chunk, so DDP can search a backward for unused parameters). Memory
holds one chunk's activations and inputs (rows are built per chunk: `steps.LazyRows`) plus (B + M)
embeddings (B times the budgets with nested budgets); the price is a second forward (and input
preprocessing) of every row, the first without a graph (on CPU with the small model, 1.1-1.5x the plain
step's time at batch 64-256, benchmarks/train_step.py).
Enabled with `TrainConfig.grad_cache_chunk` (train() then calls `grad_cache_step`).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable

import torch

from . import precision
from .distributed import all_sum, world
from .steps import cot_weight, query_info_nce, query_passes, run_query_passes, target_rows

if TYPE_CHECKING:
    from .trainer import TrainConfig


class _RngState:
    """The RNG state before a chunk's forward in pass (a), replayed for the same chunk in pass (c)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):  # the global state is untouched
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def grad_cache_step(model, examples, cfg: TrainConfig, step: int,
                    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward) -> dict:
    """contrastive_step's losses for `examples`, with their gradients accumulated into the parameters chunk
    by chunk (`backward` is called once per chunk: the trainer's, with its gradient scaler). Returns the
    losses as detached values: they have already been backpropagated."""
    size = cfg.grad_cache_chunk
    if size < 1:
        raise ValueError(f"grad_cache_chunk must be >= 1 for a GradCache step, got {size}")
    device = model.device
    scale = world()[1]  # DDP averages gradients over ranks (see distributed.step_losses)
    passes = query_passes(model, examples, cfg, step)
    contrastive = any(p.emb for p in passes)
    keys, d_rows, positive = target_rows(model, examples, cfg) if contrastive else ([], [], [])
    q_chunks, d_chunks = _chunks(len(examples), size), _chunks(len(d_rows), size)

    # (a) every chunk without a graph: embeddings, CoT token counts and loss sums, RNG states
    q_rng, d_rng, q_emb, d_emb, n_cot, cot_sum = [], [], [], [], [], 0.0
    with torch.no_grad(), precision.autocast(cfg.precision, device):
        for rows in q_chunks:
            q_rng.append(_RngState(device))
            emb, cot, _ = run_query_passes(model, passes, rows, max_groups=1)  # no distillation here
            if emb is not None:
                q_emb.append(emb)
            n_cot.append(0 if cot is None else cot.numel())
            cot_sum = cot_sum + (0.0 if cot is None else cot.sum())
        for rows in d_chunks:
            d_rng.append(_RngState(device))
            d_emb.append(model(model.make_batch(d_rows[rows])).embeddings)

    # (b) the loss on the full embedding matrices, backpropagated to them
    losses, q_grad, d_grad = {}, None, None
    if contrastive:
        q_all = torch.cat(q_emb).requires_grad_()
        d_all = torch.cat(d_emb).requires_grad_()
        con = query_info_nce(q_all, d_all, keys, positive, cfg.temperature)
        q_grad, d_grad = torch.autograd.grad(scale * con, [q_all, d_all])
        losses["contrastive"] = con.detach()
    n_total = int(all_sum(torch.tensor(float(sum(n_cot)), device=device)))
    weight = cot_weight(cfg, step)
    if n_total:
        losses["cot"] = all_sum(torch.as_tensor(cot_sum, device=device)) / n_total
    if not losses:  # e.g. a staged CoT warm-up over rows without CoT tokens
        raise ValueError(f"step {step}: nothing to train (no contrastive term and no CoT tokens)")
    losses["loss"] = losses.get("contrastive", 0.0) + weight * losses.get("cot", 0.0)

    # (c) each chunk again with a graph; DDP synchronises gradients at the last backward only
    jobs = [("q", rows, rng) for rows, rng in zip(q_chunks, q_rng)] + \
           [("d", rows, rng) for rows, rng in zip(d_chunks, d_rng)]
    no_sync = getattr(model, "no_sync", contextlib.nullcontext)
    for j, (side, rows, rng) in enumerate(jobs):
        with (contextlib.nullcontext() if j == len(jobs) - 1 else no_sync()), rng.replay():
            with precision.autocast(cfg.precision, device):
                if side == "q":
                    emb, cot, _ = run_query_passes(model, passes, rows, max_groups=1)  # no distillation here
                    grad = q_grad[rows] if q_grad is not None else None
                else:
                    emb, cot = model(model.make_batch(d_rows[rows])).embeddings, None
                    grad = d_grad[rows]
                surrogate = torch.zeros((), device=device)
                if grad is not None:
                    surrogate = surrogate + (emb.float() * grad).sum()
                if cot is not None and n_total:  # this chunk's tokens' share of the batch's mean CoT loss
                    surrogate = surrogate + (scale * weight / n_total) * cot.sum()
            backward(surrogate)
    return losses
