"""Build base variants side by side (one process each) and print their perception reports.

    python benchmarks/base_variants.py --out runs/base_variants --device cuda \
        --variants '{"v1": {}, "deep_vision": {"vision_depth": 4}}'
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def _run(name, kwargs, out, device):
    import torch
    torch.set_num_threads(2)
    from tteflash.train.base import build_base
    t = time.time()
    info = build_base(os.path.join(out, name), device=device, progress=False, **kwargs)
    print(json.dumps({"variant": name, "kwargs": kwargs, "device": device, "seconds": round(time.time() - t),
                      "steps": info["steps"], "last": info["history_last"], "perception": info["perception"]}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/base_variants")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", default='{"v1": {}}')
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_run, args=(n, kw, a.out, a.device)) for n, kw in json.loads(a.variants).items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
