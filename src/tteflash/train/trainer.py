"""The training loop: AdamW, warm-up, clipping, progress bar, atomic checkpoints, exact resume.

What a step computes is a `StepFn(model, examples, cfg, step) -> dict of scalar tensors` with a "loss"
entry; the data (and any per-step choice) is a pure function of the step index, so resuming at step s
replays exactly.

Scaling (each a TrainConfig field, off by default): GradCache for contrastive batches larger than one
forward fits (`grad_cache_chunk`, gradcache.py), gradient checkpointing, mixed precision on CUDA
(precision.py), LoRA / DoRA adapters (lora.py), and data parallelism over torchrun processes
(distributed.py: train() runs unchanged when torch.distributed is initialised).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..files import atomic_path
from . import distributed, precision
from .gradcache import grad_cache_step
from .steps import StepFn, contrastive_step


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method (equal budgets = equal TrainConfig)."""

    steps: int = 350
    """Optimizer steps."""
    batch_size: int = 16
    """Queries per step (each brings its positive and hard negatives)."""
    lr: float = 5e-4
    """Peak AdamW learning rate. 5e-4 since 2026-12-06 (1e-3 before), the rate the bundled base's last stages
    trained at: from that base at 1,000 steps, 1e-3 undid much of what it had learnt (validation hit@1, seed 0:
    no-think 28.1 at 1e-3, 38.3 at 5e-4; TTE-Flash K=8 31.9 / 44.0; benchmarks/results/demo_sweep_lr_cpu.jsonl).
    A real pretrained VLM fully fine-tuned wants far less (about 1e-5; LoRA about 1e-4)."""
    warmup_steps: int = 25
    """Linear warm-up steps, then cosine decay to 10% of the peak."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""
    temperature: float = 0.05
    """InfoNCE temperature."""
    cot_weight: float = 1.0
    """lambda in loss = contrastive + lambda * CoT (schedule `joint`); 0 disables the CoT loss."""
    schedule: str = "joint"
    """How the two tasks are trained: `joint` (contrastive + lambda * CoT from one pass), `detach` (the same
    losses, but the contrastive gradient does not reach the think-token states: a second query pass),
    `staged` (CoT loss alone for the first staged_cot_fraction of the steps, then contrastive alone with
    the think states detached)."""
    distill_weight: float = 0.0
    """Weight of a distillation loss (CODI-style; 0 = off, the paper's method): each query, embedded after its
    think tokens, learns the ranking of the step's targets that the same model gives it with its gold CoT
    written in before the think tokens (the explicit-CoT oracle's view): KL between the two softmax
    distributions, no gradient into the oracle side (with nested budgets, every budget's embedding). The oracle
    view is a second query pass, itself trained with the contrastive loss; inference is unchanged (one pass,
    no CoT). Not with GradCache or several processes."""
    answer_first_cot: bool = False
    """Train the CoT loss on the gold CoT with its answer fact first (`bench.answer_first`), so that the answer
    is decoded from the think tokens before any fact the branch is fed. Off: the CoT as written."""
    staged_cot_fraction: float = 0.3
    """Share of the steps trained on the CoT loss alone under the `staged` schedule."""
    nested_think: bool = False
    """Nested budgets: one checkpoint serves every k in {1, 2, 4, ..., K} (encode(..., think_tokens=k)).
    Each step trains the CoT loss on the first k think tokens, k drawn per step, and the embedding as
    nested_every_budget says."""
    nested_every_budget: bool = True
    """With nested_think: read the embedding at every budget from one pass (an E token per budget, each
    seeing only its first k think tokens; the contrastive loss is the mean over budgets), so every budget
    learns at every step. Off: the step embeds at the drawn k only (each budget learns in a share of the steps)."""
    tasks_per_batch: int = 2
    """Tasks a step's queries come from, drawn per step (seeded), in equal shares; 0: every task in every
    step. With 2, a query's in-batch negatives come from its own task (hard ones) and identical targets
    (class names) are encoded once per step: on TTE-Bench at 800 steps (lr 1e-3), the same validation hit@1 as every
    task per step (3 seeds: no-think 27.1 vs 27.4, TTE-Flash K=8 32.5 vs 31.6) in 0.76x / 0.87x the
    training time (benchmarks/results/demo_sweep_tasks_per_batch_cpu.jsonl)."""
    hard_negatives: int = 3
    """Hard negatives per query from its pool, the example's hard distractors first (9 = the whole pool).
    Target rows dominate a step's cost: 3 halves it against 9 (the demo: 0.75 vs 1.47 s per step, one thread,
    measured before length groups)."""
    freeze_vision: bool = True
    """Keep the vision tower fixed (the base already perceives the images)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (a killed run resumes from the last one)."""
    log_every: int = 10
    """Steps between log lines in log.jsonl."""
    seed: int = 0
    """Seed for the data order and initialisation of anything random."""
    grad_cache_chunk: int = 0
    """GradCache: encode the step's queries and targets this many rows per forward, with the exact gradient
    of the whole contrastive batch (memory of one chunk; every row encoded twice). 0 = off."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of storing them."""
    precision: str = "fp32"
    """`fp32`, or on CUDA `bf16` / `fp16` autocast (fp16 with a gradient scaler)."""
    lora_rank: int = 0
    """LoRA rank on the language model's attention and MLP projections; 0 = full fine-tuning. The think,
    embedding and CoT token rows stay trainable; the adapter is merged at the end (needs tteflash[train])."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is alpha / rank times B A)."""
    lora_dora: bool = False
    """DoRA: weight-decomposed LoRA (a learned magnitude per output row)."""

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r} (available: {', '.join(SCHEDULES)})")
        if not 0 <= self.staged_cot_fraction < 1:
            raise ValueError(f"staged_cot_fraction must be in [0, 1), got {self.staged_cot_fraction}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0 (0 = off), got {self.distill_weight}")
        if self.distill_weight and self.grad_cache_chunk:
            raise ValueError("distill_weight needs the plain step: set grad_cache_chunk=0")
        if self.grad_cache_chunk < 0:
            raise ValueError(f"grad_cache_chunk must be >= 0 (0 = off), got {self.grad_cache_chunk}")
        if self.precision not in precision.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(precision.PRECISIONS)}, got {self.precision!r}")
        if self.tasks_per_batch < 0:
            raise ValueError(f"tasks_per_batch must be >= 0 (0 = every task in every step), got {self.tasks_per_batch}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank}")

    def cot_only(self, step: int) -> bool:
        """The `staged` schedule's CoT warm-up."""
        return self.schedule == "staged" and step < int(self.staged_cot_fraction * self.steps)

    def think_budget(self, step: int, k_max: int) -> int:
        """k_max, or a nested budget drawn from the step's own seed: the think tokens the step's CoT branch reads
        (and, with nested_every_budget off, the only budget its embeddings are read at)."""
        if not self.nested_think or k_max == 0:
            return k_max
        return random.Random(f"{self.seed}/nested/{step}").choice(self.nested_budgets(k_max))

    @staticmethod
    def nested_budgets(k_max: int) -> list[int]:
        """{1, 2, 4, ...} below k_max, then k_max."""
        return [2 ** i for i in range(k_max.bit_length()) if 2 ** i < k_max] + [k_max]


SCHEDULES = ("joint", "detach", "staged")
__all__ = ["SCHEDULES", "StepFn", "TrainConfig", "contrastive_step", "lr_lambda", "train"]


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


# How a run saved before a field existed behaved, where that was not the field's default: a function of
# the saved settings, None where the field had no effect on that run.
BEFORE_FIELD = {"nested_every_budget": lambda saved: False if saved.get("nested_think") else None,
                "tasks_per_batch": lambda saved: 0}


def same_train_config(saved: dict, cfg: TrainConfig) -> bool:
    """Equal settings; a field added to TrainConfig after the checkpoint was written counts as equal when
    this run sets it to what the saved run did (the default, or as BEFORE_FIELD says)."""
    defaults = dataclasses.asdict(TrainConfig())

    def same(k, v) -> bool:
        if k in saved:
            return saved[k] == v
        if k in BEFORE_FIELD:
            was = BEFORE_FIELD[k](saved)
            return was is None or was == v
        return v == defaults[k]

    return all(same(k, v) for k, v in dataclasses.asdict(cfg).items())


def set_activation_checkpointing(vlm, on: bool) -> None:
    """Non-reentrant checkpointing of the backbone's layers (transformers 5.24 renamed gradient_ to activation_;
    5.17 has only the old name). Non-reentrant: DDP and the think hooks see one ordinary backward."""
    if hasattr(vlm, "activation_checkpointing_enable"):
        if on:
            vlm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            vlm.activation_checkpointing_disable()
    elif on:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        vlm.gradient_checkpointing_disable()


def _may_leave_parameters_unused(model, cfg: TrainConfig) -> bool:
    """Whether a backward may miss a trainable parameter: a trained vision tower (text-only rows), an untied
    LM head (rows without CoT tokens), the layers above an intermediate embedding layer (a pass without CoT
    stops below them). DDP must then search each backward's graph for unused ones."""
    tied = model.vlm.get_output_embeddings().weight is model.vlm.get_input_embeddings().weight
    return not (cfg.freeze_vision or cfg.lora_rank) or not tied or model._embed_layer_module() is not None


def train(model, cfg: TrainConfig, out_dir: str, examples_for_step: Callable[[int], list], *,
          step_fn: StepFn = contrastive_step, progress: bool = True, stop_after: int | None = None,
          desc: str = "train") -> dict:
    """Train `model` in place; resumes from `out_dir/checkpoint.pt` when present.

    stop_after: end this process after that many steps in total (simulates a kill; tests).
    Returns the history: per logged step the mean of each loss since the previous log line.
    Under torch.distributed (torchrun) each rank takes its slice of examples_for_step(step), the model is
    wrapped in DDP, the losses are the global batch's, and only rank 0 writes the checkpoint and the log.
    With LoRA (cfg.lora_rank) the adapter is merged into the weights before returning.
    """
    rank, world_size = distributed.world()
    main = rank == 0
    device = model.device
    precision.check(cfg.precision, device)
    if cfg.grad_cache_chunk and step_fn is not contrastive_step:
        raise ValueError("grad_cache_chunk chunks the default contrastive step; a custom step_fn cannot be "
                         "split into chunks (set grad_cache_chunk=0)")
    find_unused = _may_leave_parameters_unused(model, cfg)
    if world_size > 1 and not cfg.grad_cache_chunk and find_unused:
        # Queries and targets are two forwards before one backward: DDP cannot search them for unused
        # parameters (only GradCache's one-forward-per-synchronised-backward can).
        raise ValueError("under torch.distributed, a trained vision tower (freeze_vision=False) or an untied "
                         "LM head needs grad_cache_chunk > 0 (DDP cannot find unused parameters across the "
                         "step's two forwards)")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.freeze_vision:
        for p in model.vlm.model.visual.parameters():
            p.requires_grad_(False)
    tuner = None
    if cfg.lora_rank:
        from .lora import apply_lora
        tuner = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dora)
    if cfg.gradient_checkpointing:
        set_activation_checkpointing(model.vlm, True)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    scaler = precision.grad_scaler(cfg.precision, device)
    ckpt = os.path.join(out_dir, "checkpoint.pt")
    state = {"step": 0, "history": [], "train_seconds": 0.0}
    if os.path.exists(ckpt):
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if not same_train_config(saved["config"], cfg):
            raise ValueError(f"{ckpt} was written with another TrainConfig; use a new out_dir or delete it")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if scaler.is_enabled() and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        rng = saved.get("torch_rng_ranks")  # one state per rank when written by several
        torch.set_rng_state(rng[rank] if rng and len(rng) == world_size else saved["torch_rng"])
        state = saved["state"]
    net = distributed.wrap(model, find_unused) if world_size > 1 else model  # what the step calls

    def backward(loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()

    net.train()
    pending: dict[str, list[float]] = state.setdefault("pending", {})  # losses since the last log line
    bar = tqdm(range(state["step"], cfg.steps), initial=state["step"], total=cfg.steps, desc=desc,
               disable=not (progress and main), dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in bar:
        examples = distributed.shard(examples_for_step(step))
        opt.zero_grad(set_to_none=True)
        if cfg.grad_cache_chunk:
            losses = grad_cache_step(net, examples, cfg, step, backward)  # backpropagates chunk by chunk
        else:
            with precision.autocast(cfg.precision, device):
                losses = step_fn(net, examples, cfg, step)
            backward(losses["loss"])
        scaler.unscale_(opt)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        for k, v in losses.items():
            pending.setdefault(k, []).append(float(v.detach()))
        state["step"] = step + 1
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            line = {"step": state["step"], "lr": sched.get_last_lr()[0], **{k: float(np.mean(v)) for k, v in pending.items()}}
            state["history"].append(line)
            bar.set_postfix({k: f"{v:.3f}" for k, v in line.items() if k not in ("step", "lr")})
            if main:
                with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
                    f.write(json.dumps(line) + "\n")
            pending = state["pending"] = {}
        done = state["step"] == cfg.steps or (stop_after is not None and state["step"] >= stop_after)
        if state["step"] % cfg.checkpoint_every == 0 or done:
            state["train_seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            rng_ranks = distributed.gather_objects(torch.get_rng_state())
            if main:
                with atomic_path(ckpt) as tmp:  # a kill never leaves a half-written checkpoint
                    torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict(),
                                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                                "torch_rng_ranks": rng_ranks, "state": state}, tmp)
            distributed.barrier()  # no rank runs ahead of (or resumes from) a checkpoint being written
        if done:
            break
    model.eval()
    if cfg.gradient_checkpointing:
        set_activation_checkpointing(model.vlm, False)
    if tuner is not None:
        from .lora import merge_lora
        merge_lora(model, tuner)
    return state
