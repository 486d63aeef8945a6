"""Learning curve of one demo method: train from the base in chunks, evaluate after each (the explicit-CoT
model with its gold CoT, i.e. the oracle), print one JSON line per evaluation and append it to `--results`.

    python benchmarks/learning_curve.py --method explicit_cot --out runs/curve_cot --steps 700 --every 175 \
        --results benchmarks/results/learning_curve_cpu.jsonl

Quality only (the training is deterministic); the wall times it prints depend on what else the machine runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from tteflash.data import bench
from tteflash.eval.evaluate import evaluate
from tteflash.model import TTEFlashModel
from tteflash.train.demo import METHODS, examples_for_step
from tteflash.train.trainer import TrainConfig, train


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=list(METHODS), required=True)
    ap.add_argument("--out", required=True, help="training directory (resumable)")
    ap.add_argument("--base", default="checkpoints/base")
    ap.add_argument("--steps", type=int, default=700, help="length of the cosine schedule")
    ap.add_argument("--every", type=int, default=175, help="evaluate every this many steps")
    ap.add_argument("--n-test", type=int, default=40, help="test queries per task")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", default="{}", help='TrainConfig overrides as JSON, e.g. {"hard_negatives": 3}')
    ap.add_argument("--results", default=None, help="append the JSON lines to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(steps=a.steps, checkpoint_every=10**9, **json.loads(a.train))
    if a.method == "no_think":
        cfg = dataclasses.replace(cfg, cot_weight=0.0)
    model = TTEFlashModel.from_pretrained(a.base, METHODS[a.method])
    test = bench.load_split("test", n_per_task=a.n_test)
    groups = bench.TASK_GROUPS
    for stop in range(a.every, a.steps + 1, a.every):
        t = time.perf_counter()
        state = train(model, cfg, a.out, lambda s: examples_for_step(s, cfg), progress=False, stop_after=stop)
        r = evaluate(model, test, groups, gold_cot=a.method == "explicit_cot", b1_queries=9)
        line = {"method": a.method + ("_oracle" if a.method == "explicit_cot" else ""), "step": stop,
                "schedule_steps": a.steps, "train": dataclasses.asdict(cfg), "n_queries": len(test),
                "hit@1": r["overall"]["hit@1"], "by_task": {k: v["hit@1"] for k, v in r["by_task"].items()},
                "chunk_seconds": time.perf_counter() - t, "last_log": state["history"][-1]}
        print(json.dumps(line), flush=True)
        if a.results:
            with open(a.results, "a") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
