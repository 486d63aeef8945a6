"""`make study`: the design study. Every configuration in a YAML grid is trained from the same base with
the same TrainConfig (equal steps), for several seeds, evaluated on TTE-Bench's test split, and reported.

Finished runs are reused (resumable); results.json, report.md and three plots are written when the grid
is done, or from the runs finished so far with `finished_only` (a study cut short). The config layout is
documented in configs/study.yaml.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..config import TTEFlashConfig
from ..data import bench
from ..files import atomic_path, write_atomic
from .demo import GROUP_ORDER, run_method, run_in_parallel, time_alone
from .trainer import TrainConfig


@dataclass
class StudyRun:
    name: str
    """Configuration name, the same across seeds; TTE-Flash configurations start with `tte_flash`."""
    model: dict
    """TTEFlashConfig overrides on top of the base (e.g. {think_tokens: 8, think_mode: recurrent})."""
    train: dict = field(default_factory=dict)
    """TrainConfig overrides on top of the study's common ones (e.g. {schedule: detach})."""
    k_mode: str | None = None
    """Curve this run belongs to in the K-scaling plot (parallel | recurrent); its K is think_tokens."""
    eval_think: list = field(default_factory=list)
    """Nested budgets: also evaluate at these K (the `nested` curve)."""
    seeds: list | None = None
    """Seeds for this run (default: the study's); secondary variants may use fewer."""


QUICK_KEYS = {"runs", "seeds", "train", "n_test", "out", "main"}


@dataclass
class Study:
    base: str
    out: str
    runs: list
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    train: dict = field(default_factory=dict)
    n_test: int | None = None
    main: list = field(default_factory=list)
    quick: dict = field(default_factory=dict)
    """`--quick`: a subset of the runs (`runs`: names) with its own seeds, train, n_test, out and main."""

    @classmethod
    def load(cls, path: str, quick: bool = False) -> "Study":
        import yaml

        with open(path) as f:
            raw = yaml.safe_load(f)
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        runs = [StudyRun(**r) for r in raw.pop("runs")]
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: run names must be unique")
        if quick:
            q = dict(raw.get("quick") or {})
            if not q:
                raise ValueError(f"{path}: no `quick` section for --quick")
            if set(q) - QUICK_KEYS:
                raise ValueError(f"{path}: unknown keys in quick: {sorted(set(q) - QUICK_KEYS)}")
            keep = q.pop("runs", names)
            if set(keep) - set(names):
                raise ValueError(f"{path}: quick names unknown runs {sorted(set(keep) - set(names))}")
            runs = [dataclasses.replace(r, seeds=None) for r in runs if r.name in keep]
            raw = {**raw, **q, "train": {**raw.get("train", {}), **q.get("train", {})},
                   "main": q.get("main", [n for n in raw.get("main", []) if n in keep])}
        study = cls(runs=runs, **raw)
        known = {f.name for f in dataclasses.fields(TTEFlashConfig)}
        for r in runs:  # fail before hours of training, not in the middle
            if set(r.model) - known:
                raise ValueError(f"{path}: run {r.name}: unknown model settings {sorted(set(r.model) - known)}")
            TTEFlashConfig(**r.model)
            TrainConfig(**{**study.train, **r.train})
        return study

    def only(self, names: list[str]) -> "Study":
        """The study restricted to the runs named (`tte-flash study --runs a,b`)."""
        unknown = set(names) - {r.name for r in self.runs}
        if unknown:
            raise ValueError(f"--runs names unknown runs {sorted(unknown)} (the config has "
                             f"{', '.join(r.name for r in self.runs)})")
        return dataclasses.replace(self, runs=[r for r in self.runs if r.name in names],
                                   main=[n for n in self.main if n in names])


def run_study(study: Study, progress: bool = True, device: str = "cpu", only_seeds: list | None = None,
              workers: int | None = None, finished_only: bool = False) -> dict:
    """workers: runs trained and evaluated at once in separate processes (default: one per CPU core, 1 on a
    GPU), the `main` configurations first (a study cut short still holds the central comparison). Encode
    costs are then timed in this process with nothing else running, once per configuration (its first
    seed: the seeds share the architecture; `time_alone`). finished_only: train nothing, report the finished runs."""
    test = bench.load_split("test", n_per_task=study.n_test)
    groups = bench.TASK_GROUPS
    seeds = only_seeds or sorted({s for run in study.runs for s in run.seeds or study.seeds})  # a run may add seeds
    grid = [(seed, run, os.path.join(study.out, f"seed{seed}"), TrainConfig(**{**study.train, **run.train, "seed": seed}))
            for seed in seeds for run in study.runs if seed in (run.seeds or study.seeds)]
    grid.sort(key=lambda g: g[1].name not in study.main)  # stable: seed order kept within each part
    if finished_only:
        grid = [g for g in grid if os.path.exists(os.path.join(g[2], g[1].name, "result.json"))]
    run_in_parallel([dict(name=run.name, base=study.base, out=out, cfg=cfg, overrides=run.model,
                          eval_think=run.eval_think) for seed, run, out, cfg in grid],
                    workers, device, evaluate=True, n_test=study.n_test)
    results = [(seed, run, cfg, run_method(run.name, study.base, out, cfg, test, groups, progress, device,
                                           overrides=run.model, eval_think=run.eval_think))
               for seed, run, out, cfg in grid]
    costs = time_alone([(run.name, os.path.join(out, run.name), run.eval_think) for seed, run, out, cfg in grid],
                       test, device)
    entries = []
    for seed, run, cfg, res in results:
        for key, r in res.items():
            k = int(key.split("@")[1]) if "@" in key else None
            entries.append({"name": key.split("@")[0] if k is None else f"{run.name}_k{k}", "seed": seed,
                            "config": {"model": run.model, "train": dataclasses.asdict(cfg),
                                       **({"eval_think_tokens": k} if k is not None else {})},
                            "k_mode": "nested" if k is not None else run.k_mode,
                            "k": k if k is not None else run.model.get("think_tokens", 0),
                            "overall": r["overall"], "by_group": {g: v for g, v in r["by_group"].items()},
                            "encode_ms_per_query": costs[key][0], "encode_ms_per_query_b1": costs[key][1],
                            "train_seconds": r["train_seconds"], "n_queries": r.get("n_queries")})
    return write_outputs(study, entries)


def _by_name(entries) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in entries:
        out.setdefault(e["name"], []).append(e)
    return out


def _mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _score(mean: float, std: float, n_seeds: int) -> str:
    """hit@1 in %, with its spread where there is one (one seed has none)."""
    return f"{100 * mean:.1f}" + (f" +- {100 * std:.1f}" if n_seeds > 1 else "")


def summarise(entries: list[dict], candidates: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """K-scaling points and conclusions, computed from the runs (nothing hand-written).

    candidates: the TTE-Flash configurations named in advance for the comparison with no-think (the
    study's `main`); picking the best of every variant and read-out would reward selection alone."""
    names = _by_name(entries)
    scaling = []
    baseline = names.get("no_think", [])
    modes = sorted({e["k_mode"] for e in entries if e["k_mode"]})
    for mode in modes:
        ks = sorted({e["k"] for e in entries if e["k_mode"] == mode})
        for k in ([0] if baseline else []) + ks:
            pts = baseline if k == 0 else [e for e in entries if e["k_mode"] == mode and e["k"] == k]
            m, s = _mean_std([e["overall"]["hit@1"] for e in pts])
            scaling.append({"mode": mode, "k": k, "hit@1_mean": m, "hit@1_std": s, "n_seeds": len(pts)})
    conclusions = []
    if baseline:
        b_mean, b_std = _mean_std([e["overall"]["hit@1"] for e in baseline])
        flash = {n: _mean_std([e["overall"]["hit@1"] for e in v]) for n, v in names.items()
                 if n.startswith("tte_flash") and (candidates is None or n in candidates)}
        if flash:
            best = max(flash, key=lambda n: flash[n][0])
            m, s = flash[best]
            diff, spread = 100 * (m - b_mean), 100 * max(s, b_std)
            n_seeds = min(len(names[best]), len(baseline))
            if n_seeds > 1:
                verdict = f"{'larger than' if abs(diff) > spread else 'inside'} the seed spread of {spread:.1f}"
            else:  # one seed measures no spread; the test sample's own error is the least of it
                n = baseline[0].get("n_queries") or 0
                se = 100 * np.sqrt(b_mean * (1 - b_mean) / n) if n else float("nan")
                verdict = f"one seed: no spread measured; sampling error alone about +-{se:.1f} on {n} queries"
            conclusions.append(
                f"Best TTE-Flash setting{'' if candidates is None else ' named in main (' + ', '.join(sorted(flash)) + ')'} {best}: overall hit@1 {_score(m, s, len(names[best]))} vs no_think "
                f"{_score(b_mean, b_std, len(baseline))} ({diff:+.1f} points; {verdict}; "
                f"{len(names[best])} vs {len(baseline)} seeds).")
            met = diff >= 5 - 1e-9 and diff > spread and n_seeds >= 3  # 5.00 exactly counts despite float sums
            conclusions.append("The >= 5-point target over no-think (3 seeds, beyond the spread) is " + ("met." if met else "not met."))
    nested = {p["k"]: p for p in scaling if p["mode"] == "nested" and p["k"]}
    fixed = {p["k"]: p for p in scaling if p["mode"] == "parallel" and p["k"]}
    diffs = {k: 100 * (nested[k]["hit@1_mean"] - fixed[k]["hit@1_mean"]) for k in sorted(nested) if k in fixed}
    if diffs:
        parts = [f"K={k} {d:+.1f} ({nested[k]['n_seeds']} vs {fixed[k]['n_seeds']} seeds)" for k, d in diffs.items()]
        judged = [d for k, d in diffs.items() if min(nested[k]["n_seeds"], fixed[k]["n_seeds"]) >= 3]
        verdict = ("yes." if min(judged) >= -1 else "no.") if judged else "not judged (no K with 3 seeds of both)."
        conclusions.append("Nested checkpoint minus fixed-K parallel models, overall hit@1: " + "; ".join(parts) +
                           ". Within 1 point of fixed K, or above it, at every K with 3 seeds of both: " + verdict)
    return scaling, conclusions


def write_outputs(study: Study, entries: list[dict]) -> dict:
    scaling, conclusions = summarise(entries, [n for n in study.main if n.startswith("tte_flash")] or None)
    results = {"runs": entries, "k_scaling": scaling, "conclusions": conclusions}
    os.makedirs(study.out, exist_ok=True)
    write_atomic(os.path.join(study.out, "results.json"), json.dumps(results, indent=2))
    plots = make_plots(results, study.out, study.main)
    write_atomic(os.path.join(study.out, "report.md"), report(results, plots))
    return results


def report(results: dict, plots: list[str]) -> str:
    names = _by_name(results["runs"])
    head = ["configuration", "seeds", "overall hit@1 (mean +- std)"] + GROUP_ORDER + ["ms/query b32", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in names.items():
        m, s = _mean_std([r["overall"]["hit@1"] for r in runs])
        cells = [name, str(len(runs)), _score(m, s, len(runs))]
        cells += [f"{100 * np.mean([r['by_group'][g]['hit@1'] for r in runs]):.1f}" for g in GROUP_ORDER]
        cells += [f"{np.mean([r['encode_ms_per_query'] for r in runs]):.2f}", f"{np.mean([r['train_seconds'] for r in runs]):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    k_lines = ["| mode | K | hit@1 mean | std | seeds |", "|---|---|---|---|---|"]
    k_lines += [f"| {p['mode']} | {p['k']} | {100 * p['hit@1_mean']:.1f} | "
                f"{100 * p['hit@1_std']:.1f} | {p['n_seeds']} |" if p["n_seeds"] > 1 else
                f"| {p['mode']} | {p['k']} | {100 * p['hit@1_mean']:.1f} | - | 1 |"
                for p in results["k_scaling"]]
    return "\n".join(["# Design study on TTE-Bench", "", "Scores: hit@1 (%) on the test split; per meta-task = "
                      "mean over its tasks, averaged over seeds; +- the standard deviation over seeds (none "
                      "with one seed). Encode cost timed alone, once per configuration.", "", *lines, "", "## Think-budget scaling", "",
                      *k_lines, "", "## Conclusions (computed)", "", *[f"- {c}" for c in results["conclusions"]],
                      "", *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots], ""])


def make_plots(results: dict, out: str, main: list[str]) -> list[str]:
    """(a) hit@1 and encode cost vs K per mode, (b) hit@1 vs encode cost, (c) per-meta-task bars for the
    main variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = _by_name(results["runs"])
    if results["k_scaling"]:
        fig, (ax, cost) = plt.subplots(1, 2, figsize=(9, 3.5))
        for mode in sorted({p["mode"] for p in results["k_scaling"]}):
            pts = [p for p in results["k_scaling"] if p["mode"] == mode]
            ax.errorbar([p["k"] for p in pts], [100 * p["hit@1_mean"] for p in pts],
                        yerr=[100 * p["hit@1_std"] for p in pts], marker="o", capsize=3, label=mode)
            runs = [names["no_think"] if p["k"] == 0 else
                    [e for e in results["runs"] if e["k_mode"] == mode and e["k"] == p["k"]] for p in pts]
            cost.plot([p["k"] for p in pts], [np.mean([e["encode_ms_per_query"] for e in r]) for r in runs],
                      marker="o", label=mode)
        ax.set(xlabel="think tokens K", ylabel="overall hit@1 (%)", xscale="symlog", title="Think-budget scaling")
        cost.set(xlabel="think tokens K", ylabel="encode ms/query (batch 32)", xscale="symlog", title="Encode cost")
        ax.legend()
        paths.append(_save(fig, out, "k_scaling.png"))
    if names:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for name, runs in names.items():
            x, y = np.mean([r["encode_ms_per_query"] for r in runs]), 100 * np.mean([r["overall"]["hit@1"] for r in runs])
            ax.scatter(x, y)
            ax.annotate(name, (x, y), fontsize=6)
        ax.set(xlabel="encode ms/query (batch 32)", ylabel="overall hit@1 (%)", xscale="log", title="Quality vs cost")
        paths.append(_save(fig, out, "quality_vs_cost.png"))
    shown = [n for n in main if n in names]
    if shown:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(shown)
        for i, name in enumerate(shown):
            vals = [100 * np.mean([r["by_group"][g]["hit@1"] for r in names[name]]) for g in GROUP_ORDER]
            ax.bar(np.arange(len(GROUP_ORDER)) + i * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(GROUP_ORDER)) + 0.4 - width / 2, GROUP_ORDER, fontsize=7)
        ax.set(ylabel="hit@1 (%)", title="Per meta-task")
        ax.legend(fontsize=6)
        paths.append(_save(fig, out, "by_group.png"))
    return paths


def _save(fig, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
