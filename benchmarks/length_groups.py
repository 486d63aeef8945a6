"""Training step time with and without length groups (`train.steps.forward_by_length`), side by side.

    python benchmarks/length_groups.py          # about 3 minutes on one CPU thread

A/B in one process on one thread, the two variants alternating step by step over the same data (so drift
in the machine's load hits both), the first two steps of each untimed. Workloads: the demo's step
(batch 16, 3 hard negatives) for no-think, TTE-Flash K=8 and explicit CoT, and `make base`'s two stages
(`perception_step`, stage 1 batch 32, stage 2 batch 16 plus reasoning rows). Prints, per workload, the
padded tokens per step (real tokens / batch slots) and the mean step time (forward + backward) of each
variant, then their ratio. Appends the lines to benchmarks/results/length_groups_cpu.jsonl.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "src"))
from tteflash.model import TTEFlashModel  # noqa: E402
from tteflash.train import steps  # noqa: E402
from tteflash.train.base import REASONING_ROWS, base_examples, perception_step  # noqa: E402
from tteflash.train.demo import METHODS, examples_for_step  # noqa: E402
from tteflash.train.trainer import TrainConfig  # noqa: E402

BASE = os.path.join(ROOT, "checkpoints", "base")
STEPS = 10  # timed steps per variant: 12 steps of data, the first 2 untimed


def one_forward(lengths, max_groups=3):
    return [list(range(len(lengths)))]


def measure(model, step_fn, data: list) -> dict:
    """Mean step time of each variant, alternating which goes first; padding efficiency of each."""
    grouped = steps.length_groups
    seconds = {"one_forward": 0.0, "length_groups": 0.0}
    slots = {"one_forward": [0, 0], "length_groups": [0, 0]}
    real_make_batch = model.make_batch
    for i, d in enumerate(data):
        for name in (("one_forward", "length_groups") if i % 2 else ("length_groups", "one_forward")):
            steps.length_groups = one_forward if name == "one_forward" else grouped

            def counting(rows, name=name):
                batch = real_make_batch(rows)
                slots[name][0] += sum(len(r) for r in rows)
                slots[name][1] += batch.input_ids.numel()
                return batch

            model.make_batch = counting
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            step_fn(d)["loss"].backward()
            if i >= 2:
                seconds[name] += time.perf_counter() - t
    steps.length_groups = grouped
    model.make_batch = real_make_batch
    out = {f"{k}_s": round(v / (len(data) - 2), 3) for k, v in seconds.items()}
    out.update({f"{k}_real_token_share": round(a / b, 3) for k, (a, b) in slots.items()})
    out["ratio"] = round(seconds["length_groups"] / seconds["one_forward"], 3)
    return out


def main():
    torch.set_num_threads(1)
    cfg = TrainConfig()
    lines = []
    for name, settings in METHODS.items():
        model = TTEFlashModel.from_pretrained(BASE, settings)
        model.train()
        for p in model.vlm.model.visual.parameters():
            p.requires_grad_(False)
        mcfg = cfg if model.config.method != "no_think" else TrainConfig(cot_weight=0.0)
        data = [examples_for_step(s, cfg) for s in range(STEPS + 2)]
        lines.append({"workload": f"demo step, {name}", **measure(model, lambda d: steps.contrastive_step(model, d, mcfg), data)})
        print(json.dumps(lines[-1]), flush=True)
    model = TTEFlashModel.from_pretrained(BASE)
    model.train()  # the base trains its vision tower too
    for stage, bcfg, reasoning in (("stage 1", TrainConfig(batch_size=32), 0),
                                   ("stage 2", TrainConfig(batch_size=16), REASONING_ROWS)):
        data = [base_examples(s * 97, bcfg, 1000, reasoning=reasoning) for s in range(STEPS + 2)]
        lines.append({"workload": f"make base, {stage}",
                      **measure(model, lambda d: perception_step(model, d, bcfg), data)})
        print(json.dumps(lines[-1]), flush=True)
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "length_groups_cpu.jsonl"), "a") as f:
        for line in lines:
            f.write(json.dumps({**line, "torch": torch.__version__, "threads": 1}) + "\n")


if __name__ == "__main__":
    main()
