"""The training loop: AdamW, warm-up, clipping, progress bar, atomic checkpoints, exact resume.

What a step computes is a `StepFn(model, examples, cfg, step) -> dict of scalar tensors` with a "loss"
entry; the data (and any per-step choice) is a pure function of the step index, so resuming at step s
replays exactly.
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
from ..losses import info_nce


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method (equal budgets = equal TrainConfig)."""

    steps: int = 350
    """Optimizer steps."""
    batch_size: int = 16
    """Queries per step (each brings its positive and hard negatives)."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
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
    staged_cot_fraction: float = 0.3
    """Share of the steps trained on the CoT loss alone under the `staged` schedule."""
    nested_think: bool = False
    """Nested budgets: each step uses the first k think tokens, k drawn from {1, 2, 4, ..., K}, so one
    checkpoint serves every k (encode(..., think_tokens=k))."""
    hard_negatives: int = 9
    """Hard negatives per query from its pool, the example's hard distractors first (9 = the whole pool)."""
    freeze_vision: bool = True
    """Keep the vision tower fixed (the base already perceives the images)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (a killed run resumes from the last one)."""
    log_every: int = 10
    """Steps between log lines in log.jsonl."""
    seed: int = 0
    """Seed for the data order and initialisation of anything random."""

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r} (available: {', '.join(SCHEDULES)})")
        if not 0 <= self.staged_cot_fraction < 1:
            raise ValueError(f"staged_cot_fraction must be in [0, 1), got {self.staged_cot_fraction}")

    def cot_only(self, step: int) -> bool:
        """The `staged` schedule's CoT warm-up."""
        return self.schedule == "staged" and step < int(self.staged_cot_fraction * self.steps)

    def think_budget(self, step: int, k_max: int) -> int:
        """Think tokens used at this step: k_max, or a nested budget drawn from the step's own seed."""
        if not self.nested_think or k_max == 0:
            return k_max
        budgets = [2 ** i for i in range(k_max.bit_length()) if 2 ** i < k_max] + [k_max]
        return random.Random(f"{self.seed}/nested/{step}").choice(budgets)


SCHEDULES = ("joint", "detach", "staged")
StepFn = Callable[[torch.nn.Module, list, TrainConfig, int], dict]


def contrastive_step(model, examples, cfg: TrainConfig, step: int = 0) -> dict:
    """Query rows (with their CoT where the method trains one) and de-duplicated target rows.

    Queries and targets go through separate forwards: padded together, every short target row would
    be padded to the longest query (think tokens + CoT), doubling the cost of a step."""
    think = cfg.think_budget(step, model.config.think_tokens)
    train_cot = cfg.cot_weight > 0
    if cfg.schedule != "joint" and not (think and train_cot):
        raise ValueError(f"schedule {cfg.schedule!r} needs think tokens and a CoT loss (cot_weight > 0)")

    def query_pass(with_cot: bool, detach: bool = False):
        rows = [model.query_row(ex.query, f"{ex.task} query", cot=ex.cot, train_cot=with_cot, think=think)
                for ex in examples]
        return model(model.make_batch(rows), detach_think=detach)

    if cfg.cot_only(step):  # staged warm-up: no targets needed
        cot = query_pass(True).cot_loss
        return {"cot": cot, "loss": cot}
    if cfg.schedule == "joint":
        q_out = query_pass(train_cot)
        q_emb, cot = q_out.embeddings, q_out.cot_loss
    else:  # detach: the CoT from its own pass; staged (second stage): no CoT loss
        cot = query_pass(True).cot_loss if cfg.schedule == "detach" else None
        q_emb = query_pass(False, detach=True).embeddings
    keys, d_rows, positive = [], [], []
    for ex in examples:
        rest = [i for i in range(len(ex.candidates)) if i != ex.target and i not in ex.hard_negatives]
        wanted = [ex.target] + (list(ex.hard_negatives) + rest)[: cfg.hard_negatives]
        for j, c in enumerate(wanted):
            key = f"{ex.task}/{ex.cand_ids[c]}"
            if key not in keys:  # identical targets are encoded once and never act as negatives
                keys.append(key)
                d_rows.append(model.document_row(ex.candidates[c], f"{ex.task} candidate"))
            if j == 0:
                positive.append(keys.index(key))
    docs = model(model.make_batch(d_rows)).embeddings
    pos = torch.tensor(positive, device=docs.device)
    con = info_nce(q_emb, docs, pos, cfg.temperature)
    result = {"contrastive": con, "loss": con}
    if cot is not None:
        result["cot"] = cot
        result["loss"] = con + cfg.cot_weight * cot
    return result


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _same_config(saved: dict, cfg: TrainConfig) -> bool:
    """Equal settings; a field added to TrainConfig after the checkpoint was written counts as equal when
    this run leaves it at its default (the saved run behaved as that default)."""
    defaults = dataclasses.asdict(TrainConfig())
    return all(saved[k] == v if k in saved else v == defaults[k] for k, v in dataclasses.asdict(cfg).items())


def train(model, cfg: TrainConfig, out_dir: str, examples_for_step: Callable[[int], list], *,
          step_fn: StepFn = contrastive_step, progress: bool = True, stop_after: int | None = None,
          desc: str = "train") -> dict:
    """Train `model` in place; resumes from `out_dir/checkpoint.pt` when present.

    stop_after: end this process after that many steps in total (simulates a kill; tests).
    Returns the history: per logged step the mean of each loss since the previous log line.
    """
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.freeze_vision:
        for p in model.vlm.model.visual.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    ckpt = os.path.join(out_dir, "checkpoint.pt")
    state = {"step": 0, "history": [], "train_seconds": 0.0}
    if os.path.exists(ckpt):
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if not _same_config(saved["config"], cfg):
            raise ValueError(f"{ckpt} was written with another TrainConfig; use a new out_dir or delete it")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
    model.train()
    pending: dict[str, list[float]] = state.setdefault("pending", {})  # losses since the last log line
    bar = tqdm(range(state["step"], cfg.steps), initial=state["step"], total=cfg.steps, desc=desc,
               disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in bar:
        losses = step_fn(model, examples_for_step(step), cfg, step)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        for k, v in losses.items():
            pending.setdefault(k, []).append(float(v.detach()))
        state["step"] = step + 1
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            line = {"step": state["step"], "lr": sched.get_last_lr()[0], **{k: float(np.mean(v)) for k, v in pending.items()}}
            state["history"].append(line)
            bar.set_postfix({k: f"{v:.3f}" for k, v in line.items() if k not in ("step", "lr")})
            with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(line) + "\n")
            pending = state["pending"] = {}
        done = state["step"] == cfg.steps or (stop_after is not None and state["step"] >= stop_after)
        if state["step"] % cfg.checkpoint_every == 0 or done:
            state["train_seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            with atomic_path(ckpt) as tmp:  # a kill never leaves a half-written checkpoint
                torch.save({"config": dataclasses.asdict(cfg), "model": model.state_dict(),
                            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "torch_rng": torch.get_rng_state(), "state": state}, tmp)
        if done:
            break
    model.eval()
    return state
