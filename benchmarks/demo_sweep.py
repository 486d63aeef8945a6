"""Sweep demo training settings from the bundled base: one JSON line per (method, setting).

    python benchmarks/demo_sweep.py --grid '[{"lr": 1e-3}, {"lr": 2e-3, "steps": 400}]' --n-test 40

Each setting overrides the demo's TrainConfig; every method in --methods is trained with it and
evaluated on `n_test` queries per task of the test split (--split val: the validation split, to choose a
setting without looking at the test split). Used to choose the demo's defaults. OMP_NUM_THREADS=1 and two
processes use 2 cores better than one process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from tteflash.data import bench  # noqa: E402
from tteflash.train.demo import METHODS, run_method  # noqa: E402
from tteflash.train.trainer import TrainConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="checkpoints/base")
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--grid", default="[{}]", help="JSON list of TrainConfig overrides")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--n-test", type=int, default=40, help="queries per task")
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    test = bench.load_split(a.split, n_per_task=a.n_test)
    groups = bench.TASK_GROUPS
    for i, overrides in enumerate(json.loads(a.grid)):
        cfg = dataclasses.replace(TrainConfig(), **overrides)
        for name in a.methods.split(","):
            t = time.time()
            res = run_method(name, a.base, os.path.join(a.out, f"setting{i}"), cfg, test, groups,
                             progress=False, device=a.device)
            for key, r in res.items():
                print(json.dumps({"setting": overrides, "method": key, "device": a.device, "split": a.split,
                                  "hit@1": round(r["overall"]["hit@1"], 4),
                                  "by_group": {g: round(v["hit@1"], 3) for g, v in r["by_group"].items()},
                                  "by_task": {k: round(v["hit@1"], 3) for k, v in r["by_task"].items()},
                                  "cot_loss": [r.get("cot_loss_first"), r.get("cot_loss_last")],
                                  "train_seconds": round(r["train_seconds"], 1), "wall_seconds": round(time.time() - t, 1),
                                  "ms_b32": round(r["encode_ms_per_query"], 2)}), flush=True)


if __name__ == "__main__":
    main()
