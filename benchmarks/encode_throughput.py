"""Query encode throughput per method, fast path vs plain path: one JSON line per workload, then the goal ratios.

    python benchmarks/encode_throughput.py --device cpu --size small     # a few minutes on 2 CPU cores
    python benchmarks/encode_throughput.py --device cuda --size 2b       # random-init Qwen2-VL-2B shape

Sizes:
- small: the demo's base checkpoint (`checkpoints/base`, 4 layers, hidden 256) on TTE-Bench test queries
  (a mix of images, videos and text of different lengths); built in code with `build_tiny_backbone` and
  `train_tiny_tokenizer` when the checkpoint is absent.
- 2b: a randomly initialised model of Qwen2-VL-2B's shape (28 layers, hidden 1536, vocab 151,936, 32-layer
  vision tower; no weights downloaded), bf16 weights on CUDA; each query one 448x448 image (256 visual
  tokens) and about 32 text tokens (a tiny tokenizer stands in for Qwen's: the ids are what matters).

Methods (settings of one model): no_think (K=0), tte_flash (K=8, K=32), recurrent (K=8, Coconut-style, K
one-token steps over a KV cache), explicit_cot (a generated CoT of exactly 32 or 128 tokens: end token suppressed until then, then
[query][CoT][E]).

Paths:
- fast: `TTEFlashModel.encode` (length buckets, inputs decoded by threads ahead of the model, 2-D causal
  mask so SDPA / flash-attention 2 run their causal kernels, no LM head, bf16 autocast on CUDA; with
  --compile, torch.compile'd decoder layers, compiled during the warm-up).
- plain: the path encode took before the fast path: batches of the inputs in the order given, rows built
  on the calling thread, the training layout's 4-D float mask, the training forward (`model(batch)`:
  every layer, and for explicit CoT the LM head at the CoT positions), the weights' dtype, no autocast.
  CoT generation (transformers' `generate`, KV cache) is the same in both paths.

emb_per_s counts query embeddings per second of wall time, input decoding included, warm-up excluded; the
best of up to 5 runs (a run over 2 s is taken as it is), since a shared machine adds noise, never speed.
On CPU the small model runs on one torch thread by default: its matmuls gain nothing from more, and on a
busy machine OpenMP's spinning threads slow every op down many times.
Lines go to stdout and to benchmarks/results/encode_throughput_<device>_<size>.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "src"))
from tteflash.backbone import Backbone, build_tiny_backbone, load_backbone, train_tiny_tokenizer  # noqa: E402
from tteflash.config import TTEFlashConfig  # noqa: E402
from tteflash.data import bench  # noqa: E402
from tteflash.model import TTEFlashModel  # noqa: E402

# (workload, method, config, think_tokens, cot_tokens)
WORKLOADS = [
    ("no_think", "no_think", dict(think_tokens=0), 0, None),
    ("tte_flash_k8", "tte_flash", dict(think_tokens=8), 8, None),
    ("tte_flash_k32", "tte_flash", dict(think_tokens=32), 32, None),
    ("recurrent_k8", "recurrent", dict(think_tokens=8, think_mode="recurrent"), 8, None),
    ("explicit_cot_32", "explicit_cot", dict(think_tokens=0, explicit_cot=True, max_cot_tokens=32), None, 32),
    ("explicit_cot_128", "explicit_cot", dict(think_tokens=0, explicit_cot=True, max_cot_tokens=128), None, 128),
]


def small_backbone() -> Backbone:
    base = os.path.join(ROOT, "checkpoints", "base")
    if os.path.isdir(base):
        return load_backbone(base, dtype=torch.float32)
    tok = train_tiny_tokenizer(bench.corpus_texts(), vocab_size=545)
    return build_tiny_backbone(tok)


def backbone_2b(device: str) -> Backbone:
    """Qwen2-VL-2B's shape, random weights, built on the device in bf16 (CUDA) or float32 (CPU)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = train_tiny_tokenizer(bench.corpus_texts(n_per_task=8, n_per_kind=8), vocab_size=600)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise on the device: a 2B model on the CPU takes minutes
            model = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.config._attn_implementation = "sdpa"
    ip = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=448 * 448)
    return Backbone(model, tok, ip)


def queries(size: str, n: int) -> list:
    if size == "small":
        exs = bench.load_split("test", n_per_task=-(-n // len(bench.TASK_NAMES)))
        return [ex.query for ex in exs][:n]
    rng = np.random.default_rng(0)
    words = "how many red circles are left of the blue square and what is the sum of the two digits".split()
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8))
        text = " ".join(words[j % len(words)] for j in range(i % 4, i % 4 + 30))  # about 32 tiny-BPE tokens
        out.append({"image": img, "text": text})
    return out


def plain_encode(model: TTEFlashModel, items: list, batch_size: int) -> np.ndarray:
    """The plain path (module docstring): input order, main thread, 4-D mask, training forward, weights' dtype."""
    out = []
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            rows = [model.query_row(x, f"input {s + i}") for i, x in enumerate(items[s:s + batch_size])]
            if model.config.explicit_cot:
                for r, ids in zip(rows, model._generate_cot(rows)):
                    r.inline_cot = ids
            batch = model.make_batch(rows)
            batch.causal = False  # the training layout's 4-D mask
            out.append(model(batch).embeddings)
    return torch.cat(out).cpu().numpy()


@contextmanager
def forced_cot_length(model: TTEFlashModel, n: int | None):
    """Generated CoTs of exactly n tokens: the end token is suppressed until then (greedy `generate`)."""
    gc = model.vlm.generation_config
    old = gc.min_new_tokens
    gc.min_new_tokens = n
    try:
        yield
    finally:
        gc.min_new_tokens = old


def timed(fn, device: str, repeats: int = 5, long_s: float = 2.0) -> float:
    """Best wall time of up to `repeats` runs; stops after a run longer than `long_s`."""
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
        if best > long_s:
            break
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=["small", "2b"], default="small")
    ap.add_argument("--n-b32", type=int, default=None, help="queries timed at batch 32 (default: 64 small, 128 2b)")
    ap.add_argument("--n-b1", type=int, default=None, help="queries timed at batch 1 (default: 16)")
    ap.add_argument("--workloads", default=",".join(w[0] for w in WORKLOADS))
    ap.add_argument("--paths", default="fast,plain")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 for small on CPU, else torch's)")
    ap.add_argument("--compile", action="store_true", help="fast path with torch.compile'd decoder layers")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    threads = a.threads or (1 if a.device == "cpu" and a.size == "small" else None)
    if threads:
        torch.set_num_threads(threads)
    backbone = small_backbone() if a.size == "small" else backbone_2b(a.device)
    backbone.model.to(a.device)
    n = {32: a.n_b32 or (64 if a.size == "small" else 128), 1: a.n_b1 or 16}
    items = queries(a.size, max(n.values()))
    out_path = a.out or os.path.join(ROOT, "benchmarks", "results", f"encode_throughput_{a.device}_{a.size}.jsonl")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    device_name = torch.cuda.get_device_name() if a.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    import transformers
    lines = []
    with open(out_path, "w") as f:
        for name, method, cfg, k, cot_n in WORKLOADS:
            if name not in a.workloads.split(","):
                continue
            model = TTEFlashModel(backbone, TTEFlashConfig(**cfg))
            model.eval()
            for batch in (32, 1):
                for path in a.paths.split(","):
                    def run(xs, bs=batch, m=model, fast=path == "fast"):
                        if fast:
                            return m.encode(xs, batch_size=bs, show_progress_bar=False, compile=a.compile)
                        return plain_encode(m, xs, bs)

                    xs = items[:n[batch]]
                    with forced_cot_length(model, cot_n):
                        run(xs[:min(batch, 2)])  # warm-up: kernels, allocator, lazy imports, compilation
                        sec = timed(lambda: run(xs), a.device)
                    line = dict(workload=name, method=method, path=path, batch=batch, think_tokens=k, cot_tokens=cot_n,
                                compile=a.compile and path == "fast", queries=len(xs), seconds=round(sec, 3), emb_per_s=round(len(xs) / sec, 3),
                                device=a.device, device_name=device_name, size=a.size, torch=torch.__version__,
                                load_avg_1m=round(os.getloadavg()[0], 2),  # other work on the machine, for the record
                                transformers=transformers.__version__)
                    lines.append(line)
                    print(json.dumps(line), flush=True)
                    f.write(json.dumps(line) + "\n")
        ratios = goal_ratios(lines)
        print(json.dumps(ratios), flush=True)
        f.write(json.dumps(ratios) + "\n")


def goal_ratios(lines: list[dict]) -> dict:
    """Issue 5's goals side by side: measured ratio and target, where both workloads were run."""
    rate = {(x["workload"], x["path"], x["batch"]): x["emb_per_s"] for x in lines}

    def ratio(a, b):
        return round(rate[a] / rate[b], 3) if a in rate and b in rate else None

    goals = {}
    for b in (32, 1):
        goals[f"tte_flash_k8_vs_no_think_b{b}"] = (ratio(("tte_flash_k8", "fast", b), ("no_think", "fast", b)), ">= 0.95")
        goals[f"tte_flash_k32_vs_no_think_b{b}"] = (ratio(("tte_flash_k32", "fast", b), ("no_think", "fast", b)), ">= 0.9")
        goals[f"tte_flash_k8_vs_explicit_cot_128_b{b}"] = (
            ratio(("tte_flash_k8", "fast", b), ("explicit_cot_128", "fast", b)), ">= 10" if b == 32 else ">= 50")
    for w in sorted({x["workload"] for x in lines}):
        for b in (32, 1):
            goals[f"fast_vs_plain_{w}_b{b}"] = (ratio((w, "fast", b), (w, "plain", b)),
                                                ">= 1.5 on GPU, > 1 on CPU" if b == 32 else "> 1")
    return {"ratios": {k: {"measured": v, "goal": g} for k, (v, g) in goals.items() if v is not None}}


if __name__ == "__main__":
    main()
