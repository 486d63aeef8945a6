"""Data-parallel training over processes (torchrun, DDP) with one global contrastive batch.

    torchrun --nproc_per_node 8 -m tteflash.cli train --model checkpoints/base --out runs/ddp ...

`train()` needs no change under torch.distributed: each rank reads its own slice of the step's examples
(`shard`; the step's examples stay a pure function of the step index, so resuming is exact), and the
InfoNCE loss is computed over every rank's queries and targets (`global_info_nce`): the other ranks'
embeddings are gathered as constants while this rank's own rows keep their graph, so each rank's
backward gives the gradient through its own rows and the sum over ranks is the global batch's gradient.
DDP averages gradients over ranks; `step_losses` scales each rank's objective by the world size to undo
that. Only rank 0 writes checkpoints and logs.

In one process (torch.distributed not initialised) every function here is the world-size-1 case.
Not implemented: FSDP or any sharding of parameters and optimizer state (each rank holds the whole model:
a 2B model with AdamW fits one 80 GB GPU), tensor and pipeline parallelism.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..losses import info_nce


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA (each rank on GPU LOCAL_RANK),
    gloo on CPU. True when this process is one of several ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # before init: barriers on the right GPU
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def shard(examples) -> list:
    """This rank's contiguous slice of the step's examples (rank 0 first, as in the merged batch)."""
    rank, size = world()
    if size == 1:
        return examples
    if not isinstance(examples, list):
        raise TypeError(f"under torch.distributed each rank takes a slice of the step's examples: "
                        f"examples_for_step must return a list, got {type(examples).__name__}")
    if len(examples) < size:
        raise ValueError(f"the step has {len(examples)} examples for {size} ranks: each rank needs at least one")
    return examples[len(examples) * rank // size: len(examples) * (rank + 1) // size]


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order."""
    if world()[1] == 1:
        return [obj]
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a tensor (detached)."""
    x = x.detach().clone()
    if world()[1] > 1:
        dist.all_reduce(x)
    return x


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order (row counts may differ). The other ranks' rows are
    constants; this rank's slot is `x` itself, with its graph, so a backward reaches this rank's forward."""
    rank, size = world()
    if size == 1:
        return x
    counts = gather_objects(x.shape[0])
    padded = x.detach().new_zeros((max(counts), *x.shape[1:]))  # all_gather needs equal shapes
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    parts = [p[:n] for p, n in zip(parts, counts)]
    parts[rank] = x
    return torch.cat(parts)


def global_info_nce(q_emb: torch.Tensor, docs: torch.Tensor, keys: list, positive: list[int],
                    temperature: float) -> torch.Tensor:
    """InfoNCE over every rank's queries against every rank's de-duplicated targets: the loss one process
    would compute on the merged batch. keys: an identity per target row; positive[i]: query i's target row."""
    with torch.autocast(q_emb.device.type, enabled=False):  # logits in float32 even under mixed precision
        if world()[1] == 1:
            return info_nce(q_emb, docs, torch.tensor(positive, device=docs.device), temperature)
        rank_keys = gather_objects(keys)
        rank_pos = gather_objects(positive)
        q_all, d_all = gather_rows(q_emb), gather_rows(docs)
        # A target encoded on several ranks counts once, at its first row, as one process encodes it once.
        column, keep = {}, []
        for i, k in enumerate(k for ks in rank_keys for k in ks):
            if k not in column:
                column[k] = len(keep)
                keep.append(i)
        pos = [column[ks[p]] for ks, ps in zip(rank_keys, rank_pos) for p in ps]
        return info_nce(q_all, d_all[keep], torch.tensor(pos, device=docs.device), temperature)


def step_losses(con: torch.Tensor | None, cot: torch.Tensor | None, n_cot: int, cot_weight: float) -> dict:
    """{"contrastive", "cot", "loss"} of the global batch.

    con: the global contrastive loss (see global_info_nce) or None; cot: the mean NLL of this rank's n_cot
    CoT tokens, or None. The global CoT loss is the mean over all ranks' tokens: this rank's share is
    n_cot / N of its mean. Every value is the global batch's; under W ranks the gradient of "loss" is W
    times this rank's share, so that DDP's average over ranks is the global batch's gradient.
    """
    size = world()[1]
    out = {} if con is None else {"contrastive": con}
    if size == 1:
        loss = con
        if cot is not None:
            out["cot"] = cot
            loss = cot_weight * cot if con is None else con + cot_weight * cot
        return {**out, "loss": loss}
    device = (con if con is not None else cot).device
    n_total = int(all_sum(torch.tensor(float(n_cot), device=device)))  # every rank joins, with or without CoT
    objective = con if con is not None else torch.zeros((), device=device)
    value = objective.detach()
    if n_total:
        share = cot * (n_cot / n_total) if cot is not None else torch.zeros((), device=device)
        out["cot"] = all_sum(share)
        objective = objective + cot_weight * share
        value = value + cot_weight * out["cot"]
    # The global loss's value (what is logged) with the gradient of W times this rank's objective.
    out["loss"] = value + size * (objective - objective.detach())
    return out


class DDPModel(DistributedDataParallel):
    """DDP over a TTEFlashModel that also answers the model's own attributes (query_row, make_batch, config,
    vlm, ...), so a step function takes it in place of the model: forwards go through DDP (gradient
    synchronisation), everything else reaches the wrapped model."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model, find_unused_parameters: bool) -> DDPModel:
    device = model.device
    return DDPModel(model, device_ids=[device.index] if device.type == "cuda" else None,
                    forward_sync_buffers=False,  # the model's buffers (rotary frequencies) never change
                    find_unused_parameters=find_unused_parameters)
