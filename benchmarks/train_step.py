"""Training step time and peak memory: contrastive-only vs both losses, and GradCache across global batches.

    python benchmarks/train_step.py --device cpu --size small     # a few minutes on 2 CPU cores
    python benchmarks/train_step.py --device cuda --size 2b       # random-init Qwen2-VL-2B shape

Sizes as in encode_throughput.py: small = the demo's base checkpoint (4 layers, hidden 256); 2b = a
randomly initialised model of Qwen2-VL-2B's shape (bf16 weights on CUDA). The data are TTE-Bench training
examples (images of about 100 px, short texts and CoTs) for both sizes. The model is TTE-Flash with K=8
think tokens, the vision tower frozen (the trainer's default).

Workloads (one JSON line each, also written to benchmarks/results/train_step_<device>_<size>.jsonl):
- contrastive_only / both_losses: the plain step (`contrastive_step`, backward, AdamW) at a small batch,
  cot_weight 0 vs 1, then a ratio line (both / contrastive-only) for time and memory.
- grad_cache_b<B>: one GradCache step (`grad_cache_step`, chunk fixed) at global batch B = 64 ... 1024, and
  plain_b<B>: the plain step at the same batch where it is run (on CPU up to --plain-max, default 256; on
  CUDA until it runs out of memory, recorded as oom).

Each workload runs in a fresh subprocess, so memory figures do not leak from one to the next. Peak memory:
on CUDA torch.cuda.max_memory_allocated during the steps; on CPU the process's peak resident set size
(getrusage ru_maxrss) after the steps, and base_mb, the same figure before the first step (interpreter,
model, optimizer, the examples), so peak_mb - base_mb is what the step itself added. step_s is the best
wall time of the timed steps (zero_grad, step, backward, AdamW step; step_s_mean their mean), after
warm-up steps, since other work on a shared machine only ever adds time; the GradCache
and plain sweeps on CPU time one step without warm-up (it includes first-touch allocation), to stay in a
few minutes. hard_negatives: 1 for the loss comparison, 0 in the sweeps (each query brings its target
only, so the targets are about B as well).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tteflash.config import TTEFlashConfig  # noqa: E402
from tteflash.model import TTEFlashModel  # noqa: E402
from tteflash.train.demo import examples_for_step  # noqa: E402
from tteflash.train.gradcache import grad_cache_step  # noqa: E402
from tteflash.train.steps import target_rows  # noqa: E402
from tteflash.train.trainer import TrainConfig, contrastive_step  # noqa: E402

BATCHES = (64, 128, 256, 512, 1024)
THINK_TOKENS = 8  # TTE-Flash K=8 in every workload


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_workload(spec: dict) -> dict:
    """One workload in this process: build the model and data, run the steps, measure."""
    from encode_throughput import backbone_2b, small_backbone

    device = spec["device"]
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    backbone = small_backbone() if spec["size"] == "small" else backbone_2b(device)
    model = TTEFlashModel(backbone, TTEFlashConfig(think_tokens=THINK_TOKENS)).to(device)
    model.train()
    for p in model.vlm.model.visual.parameters():
        p.requires_grad_(False)
    if spec["checkpointing"]:
        from tteflash.train.trainer import set_activation_checkpointing
        set_activation_checkpointing(model.vlm, True)
    cfg = TrainConfig(batch_size=spec["batch"], hard_negatives=spec["hard_negatives"], cot_weight=spec["cot_weight"],
                      grad_cache_chunk=spec["chunk"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    data = examples_for_step(0, cfg)  # the demo's first step, at this batch size
    n_targets = len(target_rows(model, data, cfg)[0])  # de-duplicated target rows

    def step():
        opt.zero_grad(set_to_none=True)
        if spec["chunk"]:
            grad_cache_step(model, data, cfg, 0)
        else:
            contrastive_step(model, data, cfg, 0)["loss"].backward()
        opt.step()

    base = maxrss_mb()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated() / 2**20
    times = []
    try:
        for i in range(spec["warmup"] + spec["steps"]):
            t = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t)
    except torch.OutOfMemoryError:
        return {"oom": True, "base_mb": round(base, 1)}
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else maxrss_mb()
    # best of the timed steps: other work on a shared machine only ever adds time
    return {"step_s": round(min(times), 3), "step_s_mean": round(sum(times) / len(times), 3),
            "emb_per_s": round(spec["batch"] / min(times), 2),  # training throughput: queries per second
            "peak_mb": round(peak, 1), "base_mb": round(base, 1), "step_mb": round(peak - base, 1),
            "targets": n_targets, "oom": False}


def in_subprocess(spec: dict) -> dict:
    """run_workload in a fresh interpreter (clean peak-memory counters)."""
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"workload {spec['workload']} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=["small", "2b"], default="small")
    ap.add_argument("--batch", type=int, default=None, help="batch of the loss comparison (default: 16 small, 32 2b)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps of the loss comparison (after one warm-up)")
    ap.add_argument("--chunk", type=int, default=None, help="GradCache chunk (default: 32 small, 16 2b)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="GradCache global batches")
    ap.add_argument("--plain-max", type=int, default=None,
                    help="largest batch run on the plain path in the sweep (default: 256 on CPU, all on CUDA)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="checkpoint the decoder layers in every workload")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 for small on CPU)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(run_workload(json.loads(a.worker))))
        return
    import transformers

    small = a.size == "small"
    cpu = a.device == "cpu"
    threads = a.threads or (1 if cpu and small else None)
    chunk = a.chunk or (32 if small else 16)
    batch = a.batch or (16 if small else 32)
    plain_max = a.plain_max or (256 if cpu else max(BATCHES))
    common = dict(device=a.device, size=a.size, threads=threads, checkpointing=a.gradient_checkpointing)
    specs = [dict(workload=name, method="tte_flash", path="plain", batch=batch, chunk=0, cot_weight=w,
                  hard_negatives=1, warmup=1, steps=a.steps, **common)
             for name, w in (("contrastive_only", 0.0), ("both_losses", 1.0))]
    sweep_steps = dict(warmup=0, steps=1) if cpu else dict(warmup=1, steps=2)
    for b in map(int, a.batches.split(",")):
        specs.append(dict(workload=f"grad_cache_b{b}", method="tte_flash", path="grad_cache", batch=b, chunk=chunk,
                          cot_weight=1.0, hard_negatives=0, **sweep_steps, **common))
        if b <= plain_max:
            specs.append(dict(workload=f"plain_b{b}", method="tte_flash", path="plain", batch=b, chunk=0,
                              cot_weight=1.0, hard_negatives=0, **sweep_steps, **common))
    out_path = a.out or os.path.join(ROOT, "benchmarks", "results", f"train_step_{a.device}_{a.size}.jsonl")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    device_name = torch.cuda.get_device_name() if not cpu else f"cpu ({threads or torch.get_num_threads()} threads)"
    lines = []
    with open(out_path, "w") as f:
        def emit(line):
            print(json.dumps(line), flush=True)
            f.write(json.dumps(line) + "\n")

        for spec in specs:
            if any(x["oom"] and x["path"] == spec["path"] and x["batch"] < spec["batch"] for x in lines):
                continue  # a smaller batch already ran out of memory on this path
            t0 = time.perf_counter()
            res = in_subprocess(spec)
            line = {k: spec[k] for k in ("workload", "method", "path", "batch", "chunk", "cot_weight", "hard_negatives",
                                         "warmup", "steps")}
            line["think_tokens"] = THINK_TOKENS
            line.update(res, device=a.device, device_name=device_name, size=a.size,
                        gradient_checkpointing=a.gradient_checkpointing, wall_s=round(time.perf_counter() - t0, 1),
                        load_avg_1m=round(os.getloadavg()[0], 2), torch=torch.__version__,
                        transformers=transformers.__version__)
            lines.append(line)
            emit(line)
        by = {x["workload"]: x for x in lines}
        c, b = by.get("contrastive_only"), by.get("both_losses")
        if c and b and not (c["oom"] or b["oom"]):
            # what the step added over the memory before it (weights and optimizer state excluded on CUDA too)
            emit({"ratios": {"both_vs_contrastive_step_s": round(b["step_s"] / c["step_s"], 3),
                             "both_vs_contrastive_step_mb": round(b["step_mb"] / max(c["step_mb"], 1e-9), 3)},
                  "batch": batch, "device": a.device, "size": a.size})
        if cpu:
            emit({"note": f"CPU: the sweeps time 1 step each without warm-up, plain path up to batch {plain_max}; "
                          "peak_mb is the process's peak RSS, base_mb the same before the first step"})


if __name__ == "__main__":
    main()
