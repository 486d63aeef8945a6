"""Why does a base not read page values? Continue its training on pages alone for a few hundred steps,
with and without the partial-caption alignment, and compare greedy page captions. (The recorded results,
benchmarks/results/base_page_probe_cpu.jsonl, are of the earlier 3,200-step partial-caption base.)

    python benchmarks/base_page_probe.py --out runs/page_probe --steps 250

Each variant runs in its own single-threaded process; one JSON line per variant (before / after).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import time


def _run(name: str, partial: bool, a) -> None:
    import torch
    torch.set_num_threads(1)
    from tteflash.data import bench
    from tteflash.model import TTEFlashModel
    from tteflash.train.base import partial_caption, perception_report, perception_step
    from tteflash.train.trainer import TrainConfig, train

    model = TTEFlashModel.from_pretrained(a.base)
    before = perception_report(model, n=a.n_check)["page"]
    cfg = TrainConfig(steps=a.steps, batch_size=32, lr=a.lr, warmup_steps=10, temperature=0.07, cot_weight=1.0,
                      freeze_vision=False, checkpoint_every=10**9, log_every=25, seed=0)

    def pages(step: int) -> list:
        rng = random.Random(f"page-probe/{step}")
        pairs = []
        for _ in range(cfg.batch_size):
            inp, caption = bench.perception_example("page", rng)
            pairs.append((inp, caption, partial_caption(caption, rng) if partial else caption))
        return [pairs, [], []]

    t = time.time()
    state = train(model, cfg, os.path.join(a.out, name), pages, step_fn=perception_step, progress=False)
    after = perception_report(model, n=a.n_check)["page"]
    print(json.dumps({"variant": name, "partial_captions": partial, "steps": a.steps, "lr": a.lr,
                      "page_before": before, "page_after": after, "last_log": state["history"][-1],
                      "seconds": round(time.time() - t)}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="checkpoints/base")
    ap.add_argument("--out", default="runs/page_probe")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--n-check", type=int, default=40, help="fresh pages captioned before and after")
    a = ap.parse_args()
    procs = [mp.get_context("spawn").Process(target=_run, args=(name, partial, a))
             for name, partial in (("with_partial_captions", True), ("full_captions_only", False))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
