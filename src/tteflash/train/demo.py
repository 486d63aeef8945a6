"""`make demo`: train no-think, TTE-Flash (K=8) and explicit CoT from the bundled base with equal
budgets, evaluate them and the explicit-CoT oracle on TTE-Bench's test split, write a report."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import random
import time

import numpy as np
import torch
import transformers

from ..data import bench
from ..eval.evaluate import encode_pools, evaluate, first_per_task, query_cost
from ..files import atomic_dir, write_atomic
from ..model import TTEFlashModel
from .trainer import TrainConfig, same_train_config, train

# Every compared method is a configuration of the same model, trained with the same TrainConfig.
METHODS = {
    "no_think": {"think_tokens": 0, "explicit_cot": False},
    "tte_flash_k8": {"think_tokens": 8, "explicit_cot": False},
    "explicit_cot": {"think_tokens": 0, "explicit_cot": True},
}
# The demo's training budget per method, about the most that keeps `git clone` + `make demo` within its 12
# minutes on 2 cores. Batches from two tasks (TrainConfig.tasks_per_batch) made steps cheaper, which paid for
# 1,000 steps (583-660 s from a fresh clone, docs/demo-results.json) where 800 had taken 588 s; on the four-stage
# base 800 steps beat 600 for every method but the oracle (3 seeds each: docs/results.md).
DEMO_STEPS = 1000
GROUP_ORDER = ["image-CLS", "image-QA", "image-RET", "image-VG", "video-QA", "visdoc"]


def examples_for_step(step: int, cfg: TrainConfig, tasks=bench.TASK_NAMES) -> list:
    """cfg.batch_size training examples, a pure function of the step (exact resume); each seed reads its own.
    With cfg.tasks_per_batch = t they come from t distinct tasks drawn for the step (seeded), in equal
    shares; with 0, from every task in turn."""
    check_sampler(cfg, tasks)
    n, bs, t = len(tasks), cfg.batch_size, cfg.tasks_per_batch
    start = step * bs + cfg.seed * n * 10**6  # seeds apart by a multiple of n: with t = 0, one task order
    if t == 0:
        return [bench.make_example(tasks[i % n], "train", i // n) for i in range(start, start + bs)]
    drawn = random.Random(f"tasks/{cfg.seed}/{step}").sample(tasks, t)
    # a step owns indices [start, start + bs) of every task: no example repeats across steps or seeds
    return [bench.make_example(drawn[i * t // bs], "train", start + i) for i in range(bs)]


def check_sampler(cfg: TrainConfig, tasks=bench.TASK_NAMES) -> None:
    """ValueError when examples_for_step cannot draw cfg's batches (called before workers start, too)."""
    n, bs, t = len(tasks), cfg.batch_size, cfg.tasks_per_batch
    if t and not t <= min(n, bs):
        raise ValueError(f"tasks_per_batch={t} needs at most {min(n, bs)} (the tasks, and the batch size {bs})")


def _loss_ends(history: list[dict], key: str) -> tuple[float | None, float | None]:
    """Mean of the first and last 10% of logged values."""
    vals = [h[key] for h in history if key in h]
    if not vals:
        return None, None
    n = max(1, len(vals) // 10)
    return float(np.mean(vals[:n])), float(np.mean(vals[-n:]))


def train_method(name: str, base: str, out: str, cfg: TrainConfig, device: str = "cpu",
                 overrides: dict | None = None, progress: bool = True) -> dict:
    """Train one configuration from the base; writes `out/name/model` and `out/name/trained.json`.

    Reused when `trained.json` exists; a killed run resumes from `out/name/checkpoint.pt`.
    overrides: model settings (default: METHODS[name])."""
    d = os.path.join(out, name)
    done = os.path.join(d, "trained.json")
    trained_with = _trained_with(name, base, cfg, overrides)
    info = _load_if_same(done, trained_with, cfg)
    if info is not None:
        return info
    model = TTEFlashModel.from_pretrained(base, trained_with["model"], device=device)
    trains_cot = model.config.method != "no_think"
    mcfg = dataclasses.replace(cfg, cot_weight=cfg.cot_weight if trains_cot else 0.0)
    state = train(model, mcfg, d, lambda s: examples_for_step(s, cfg),
                  progress=progress, desc=name)
    with atomic_dir(os.path.join(d, "model")) as tmp:
        model.save_pretrained(tmp)
    info = {"train_seconds": state["train_seconds"], "train_steps": state["step"]}
    first, last = _loss_ends(state["history"], "cot")
    if first is not None:
        info.update(cot_loss_first=first, cot_loss_last=last)
    write_atomic(done, json.dumps({**info, "trained_with": trained_with}, indent=2))
    return info


def _trained_with(name: str, base: str, cfg: TrainConfig, overrides: dict | None) -> dict:
    """What a run's files were produced from; a finished run is reused only for the same."""
    return {"model": METHODS[name] if overrides is None else overrides, "train": dataclasses.asdict(cfg),
            "base": os.path.realpath(base), "base_weights": _weights_digest(base)}


def _weights_digest(base: str) -> str:
    """Content hash of the base's weights: a base rebuilt at the same path must not reuse old runs."""
    path = os.path.join(base, "model.safetensors")
    st = os.stat(path)
    return _file_digest(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per file version (size and mtime are part of the key): every run of a grid asks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _load_if_same(path: str, trained_with: dict, cfg: TrainConfig) -> dict | None:
    """The JSON at `path` without its `trained_with` record, None when absent; an error when it was produced
    with other (or unrecorded) settings, rather than reporting old results under new settings."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    saved = data.pop("trained_with", None)
    if (saved is None or any(saved.get(k) != trained_with[k] for k in ("model", "base", "base_weights"))
            or not same_train_config(saved["train"], cfg)):
        raise ValueError(f"{os.path.dirname(path)} holds a run trained with other or unrecorded settings "
                         f"({saved}); use another output directory or delete it")
    return data


def _job(kwargs: dict) -> None:
    torch.set_num_threads(kwargs.pop("threads"))
    t = time.perf_counter()
    path = os.path.join(kwargs["out"], kwargs["name"])
    if "n_test" in kwargs:  # train and evaluate (quality only: timings are taken alone, afterwards)
        test = _test_split(kwargs.pop("n_test"))
        run_method(**kwargs, test=test, groups=bench.TASK_GROUPS, progress=False)
        print(f"{path}: trained and evaluated ({time.perf_counter() - t:.0f} s)", flush=True)
    else:
        info = train_method(**kwargs, progress=False)  # several bars at once would garble the terminal
        print(f"{path}: {info['train_steps']} steps trained ({time.perf_counter() - t:.0f} s)", flush=True)


@functools.lru_cache(maxsize=2)
def _test_split(n_test: int | None) -> list:
    return bench.load_split("test", n_per_task=n_test)


def run_in_parallel(jobs: list[dict], workers: int | None = None, device: str = "cpu",
                      evaluate: bool = False, n_test: int | None = None) -> None:
    """Run train_method(**job) for the unfinished jobs in up to `workers` processes (default: one per CPU
    core), one share of the cores each; with one worker (the default on a GPU) nothing runs here and
    run_method trains in the calling process. evaluate: the workers also evaluate on the test split
    (n_test queries per task; None: all), through run_method(**job); its encode timings were then not taken
    alone on the machine.

    Small models scale poorly across threads (2 threads: about 1.2x one on 2 cores), so separate
    single-threaded runs finish a grid sooner than one run after another with all threads."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    finished = ("result.json",) if evaluate else ("trained.json", "result.json")
    jobs = [j for j in jobs if not any(os.path.exists(os.path.join(j["out"], j["name"], f)) for f in finished)]
    workers = min(workers or (1 if torch.device(device).type == "cuda" else cores), len(jobs))
    if workers <= 1:
        return
    threads = max(1, cores // workers)
    print(f"{'training and evaluating' if evaluate else 'training'} {', '.join(j['name'] for j in jobs)} in "
          f"{workers} processes, {threads} thread(s) each (log: <out>/<method>/log.jsonl)", flush=True)
    extra = {"device": device, "threads": threads, **({"n_test": n_test} if evaluate else {})}
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_job, [{**job, **extra} for job in jobs], chunksize=1)


def readouts(name: str, eval_think: list[int] | None = None) -> dict[str, dict]:
    """The result entries of one trained configuration, each with its evaluate() settings: the model as
    trained, `name@k` at other think budgets (nested-budget models), and for explicit CoT (a name starting
    with `explicit_cot`) its oracle `name_oracle` (the same model, gold CoT at test time)."""
    out = {name: {}, **{f"{name}@{k}": {"think_tokens": k} for k in eval_think or []}}
    if name.startswith("explicit_cot"):
        out[f"{name}_oracle"] = {"gold_cot": True}
    return out


TIMED_PER_TASK = 64  # queries per task timed at batch 32 by time_alone (the first 5 of them at batch 1)
TIMING_REPEATS = 3  # time_alone keeps the fastest of this many passes: single passes put TTE-Flash K=8 at
# 1.09-1.35x no-think's batch-32 cost in four fresh-clone demos


def time_alone(runs: list[tuple[str, str, list[int] | None]], test, device: str) -> dict[str, list[float]]:
    """Encode ms per query (batch 32, batch 1) of every read-out of each (name, run directory, eval_think),
    timed one at a time in this process, over the first TIMED_PER_TASK test queries of each task, the
    fastest of TIMING_REPEATS passes. A name
    timed once is not timed again (a study's seeds share the architecture); the figures are kept in
    `encode_cost.json` in the run directory, so a rerun reuses them."""
    timed = first_per_task(test, TIMED_PER_TASK)
    costs: dict[str, list[float]] = {}
    for name, run_dir, eval_think in runs:
        keys = readouts(name, eval_think)
        if set(keys) <= set(costs):
            continue
        path = os.path.join(run_dir, "encode_cost.json")
        if os.path.exists(path):
            with open(path) as f:
                costs.update(json.load(f))
            continue
        model = TTEFlashModel.from_pretrained(os.path.join(run_dir, "model"), device=device)
        mine = {key: list(query_cost(model, timed, repeats=TIMING_REPEATS, **how)[1:]) for key, how in keys.items()}
        write_atomic(path, json.dumps(mine, indent=2))
        costs.update(mine)
    return costs


def run_method(name: str, base: str, out: str, cfg: TrainConfig, test, groups, progress=True,
               device: str = "cpu", overrides: dict | None = None, eval_think: list[int] | None = None) -> dict:
    """Train one configuration (or reuse its training), evaluate it, write `out/name/result.json`.

    overrides: model settings (default: METHODS[name]); eval_think: also evaluate at these think budgets
    (entries `name@k`, for nested-budget models)."""
    done = os.path.join(out, name, "result.json")
    trained_with = _trained_with(name, base, cfg, overrides)
    result = _load_if_same(done, trained_with, cfg)
    if result is not None:  # finished methods are not recomputed
        return result
    info = train_method(name, base, out, cfg, device, overrides, progress)
    model = TTEFlashModel.from_pretrained(os.path.join(out, name, "model"), device=device)
    result = {}
    pools = encode_pools(model, test)  # the targets, shared by this model's read-outs
    for key, how in readouts(name, eval_think).items():
        kept = {k: v for k, v in info.items() if not (how.get("gold_cot") and k.startswith("cot_loss"))}
        result[key] = {**evaluate(model, test, groups, pools=pools, **how), **kept}
    write_atomic(done, json.dumps({**result, "trained_with": trained_with}, indent=2))
    return result


def report(results: dict) -> str:
    methods = results["methods"]
    base_ms = methods["no_think"]["encode_ms_per_query"]
    head = ["method"] + GROUP_ORDER + ["overall hit@1", "ms/query b32", "ms/query b1", "cost vs no-think (b32)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in methods.items():
        cells = [name] + [f"{100 * r['by_group'][g]['hit@1']:.1f}" for g in GROUP_ORDER]
        cells += [f"{100 * r['overall']['hit@1']:.1f}", f"{r['encode_ms_per_query']:.2f}",
                  f"{r['encode_ms_per_query_b1']:.2f}", f"{r['encode_ms_per_query'] / base_ms:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    b = results["benchmark"]
    text = [f"# TTE-Flash demo on {b['name']} {b['version']}", "",
            f"{b['n_test_queries']} test queries over {len(b['tasks'])} tasks; chance hit@1 "
            f"{100 * b['chance_hit@1']:.1f}%. Scores: hit@1 (%), per meta-task = mean over its tasks.", "",
            *lines, ""]
    for name, r in methods.items():
        if "cot_loss_first" in r:
            text.append(f"- {name}: CoT loss {r['cot_loss_first']:.3f} -> {r['cot_loss_last']:.3f}; "
                        f"trained {r['train_steps']} steps in {r['train_seconds']:.0f} s")
        else:
            text.append(f"- {name}: trained {r['train_steps']} steps in {r['train_seconds']:.0f} s")
    if results.get("train_workers", 1) > 1:
        text.append(f"- the methods trained at once in {results['train_workers']} processes: their training times "
                    "are wall times while sharing the cores")
    env = results["environment"]
    text += ["", f"Environment: {env['device']}, torch {env['torch']}, transformers {env['transformers']}.", ""]
    return "\n".join(text)


def run_demo(base: str = "checkpoints/base", out: str = "runs/demo", cfg: TrainConfig | None = None,
             n_test: int | None = None, progress: bool = True, device: str | None = None,
             workers: int | None = None) -> dict:
    """workers: methods trained and evaluated at once in separate processes (default: all of them on CPU, 1
    on a GPU); their encode costs are then timed in this process, one method at a time (time_alone)."""
    if not os.path.exists(os.path.join(base, "model.safetensors")):
        raise SystemExit(f"no base checkpoint at {base!r}: run `make base` first")
    cfg = cfg or TrainConfig(steps=DEMO_STEPS)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    test = bench.load_split("test", n_per_task=n_test)
    groups = bench.TASK_GROUPS
    on_gpu = torch.device(device).type == "cuda"
    workers = workers or (1 if on_gpu else len(METHODS))  # 3 processes on 2 cores beat 2: no idle core at the end
    t0 = time.perf_counter()
    # a method evaluates as soon as it is trained, while the others still train
    run_in_parallel([dict(name=n, base=base, out=out, cfg=cfg) for n in METHODS], workers, device,
                    evaluate=True, n_test=n_test)
    methods = {}
    for name in METHODS:
        methods.update(run_method(name, base, out, cfg, test, groups, progress, device))
    costs = time_alone([(name, os.path.join(out, name), None) for name in METHODS], test, device)
    for key, (ms_batch, ms_b1) in costs.items():
        methods[key].update(encode_ms_per_query=ms_batch, encode_ms_per_query_b1=ms_b1)
    results = {
        "benchmark": {"name": bench.BENCH_NAME, "version": bench.BENCH_VERSION, "n_test_queries": len(test),
                      "chance_hit@1": float(np.mean([1 / len(ex.candidates) for ex in test])),
                      "tasks": [dataclasses.asdict(t) for t in bench.TASKS]},
        "environment": {"device": torch.cuda.get_device_name(device) if on_gpu else f"cpu ({os.cpu_count()} cores, {platform.machine()})",
                        "torch": torch.__version__, "transformers": transformers.__version__},
        "train_config": dataclasses.asdict(cfg),
        "train_workers": workers,  # methods trained at once: their train_seconds are wall times while sharing the cores
        "timed_queries_per_task": TIMED_PER_TASK,
        "timing_repeats": TIMING_REPEATS,  # each encode cost: the fastest of this many passes
        "wall_seconds": time.perf_counter() - t0,  # training and evaluation in this call (set-up and reused runs excluded)
        "methods": methods,
    }
    write_atomic(os.path.join(out, "results.json"), json.dumps(results, indent=2))
    text = report(results)
    write_atomic(os.path.join(out, "report.md"), text)
    print(text)
    return results
