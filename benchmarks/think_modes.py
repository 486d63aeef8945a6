"""Training step and encode cost of parallel vs recurrent think tokens at K = 2, 8, 16, side by side.

    python benchmarks/think_modes.py                    # about 4 minutes on one CPU thread
    python benchmarks/think_modes.py --src OTHER/src    # the same figures for another checkout of tteflash

One process, one thread, the committed base, the demo's training data. Per configuration: the mean
training step (the demo's: batch 16, 3 hard negatives; forward + backward, the first two steps untimed)
and encode ms/query (batch 32, the queries of 64 training examples, mixed tasks: texts, images, videos,
pages; best of 3, after one untimed batch). Then, per K, recurrent / parallel. With --src the figures describe that
checkout (e.g. a `git worktree` of an older commit), for a before/after comparison on the same machine.
Appends to benchmarks/results/think_modes_cpu.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ap = argparse.ArgumentParser()
ap.add_argument("--src", default=os.path.join(ROOT, "src"), help="the tteflash source tree to measure")
ap.add_argument("--steps", type=int, default=6, help="timed training steps per configuration")
args = ap.parse_args()
sys.path.insert(0, args.src)

import torch  # noqa: E402

from tteflash.model import TTEFlashModel  # noqa: E402
from tteflash.train.demo import examples_for_step  # noqa: E402
from tteflash.train.trainer import TrainConfig, contrastive_step  # noqa: E402

BASE = os.path.join(ROOT, "checkpoints", "base")


def measure(settings: dict) -> dict:
    model = TTEFlashModel.from_pretrained(BASE, settings)
    cfg = TrainConfig()
    model.train()
    for p in model.vlm.model.visual.parameters():
        p.requires_grad_(False)
    seconds = 0.0
    for s in range(args.steps + 2):
        data = examples_for_step(s, cfg)
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        contrastive_step(model, data, cfg)["loss"].backward()
        if s >= 2:
            seconds += time.perf_counter() - t
    model.eval()
    queries = [e.query for s in range(4) for e in examples_for_step(100 + s, cfg)]
    model.encode(queries[:32], batch_size=32, show_progress_bar=False)
    times = []
    for _ in range(3):  # best of 3: other work on the machine only ever adds time
        t = time.perf_counter()
        model.encode(queries, batch_size=32, show_progress_bar=False)
        times.append(time.perf_counter() - t)
    encode_ms = min(times) / len(queries) * 1000
    return {"step_s": round(seconds / args.steps, 3), "encode_ms_per_query": round(encode_ms, 2)}


def main():
    torch.set_num_threads(1)
    rev = subprocess.run(["git", "-C", args.src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    lines = []
    for k in (2, 8, 16):
        row = {}
        for mode in ("parallel", "recurrent"):
            row[mode] = measure({"think_tokens": k, "think_mode": mode})
            lines.append({"k": k, "mode": mode, **row[mode]})
            print(json.dumps(lines[-1]), flush=True)
        lines.append({"k": k, "recurrent_over_parallel": {
            key: round(row["recurrent"][key] / row["parallel"][key], 2) for key in row["parallel"]}})
        print(json.dumps(lines[-1]), flush=True)
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "think_modes_cpu.jsonl"), "a") as f:
        for line in lines:
            f.write(json.dumps({**line, "src_rev": rev.stdout.strip(), "torch": torch.__version__, "threads": 1}) + "\n")


if __name__ == "__main__":
    main()
