"""`tte-flash eval mmeb`: encode, score and report MMEB-v2 tasks with any encoder that has `encode()`.

Stages per task, each cached on disk under `<out>/cache/<task>/` so a killed run resumes where it stopped:
queries -> query embeddings, candidates -> candidate embeddings, then scores and predictions (a task whose
`<task>_score.json` exists with the same settings is not recomputed). Under `torchrun` every rank encodes
a strided shard of each stage; rank 0 merges the shards, scores and writes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...files import save_npy_atomic, write_atomic
from ..metrics import RANK_METRICS, graded_metrics, mean_graded, rank_order
from .readers import TaskData, read_task
from .registry import GROUPS, TASKS, Task, select


@dataclasses.dataclass
class MMEBEvalConfig:
    """Settings of one harness run (each field is a `tte-flash eval mmeb` flag)."""

    model: str = ""
    """Checkpoint directory or hub id (a TTE-Flash checkpoint, or a plain Qwen-VL backbone)."""
    data_root: str = ""
    """Folder holding the MMEB-v2 media as released (image-tasks/, video-tasks/, visdoc-tasks/)."""
    tasks: str = "image,video,visdoc"
    """Comma-separated modalities (image, video, visdoc), groups (e.g. image-QA), task names, or all."""
    out: str = "runs/mmeb"
    """Output folder: <task>_score.json, <task>_pred.jsonl, summary.json, summary.md, cache/."""
    annotations: str | None = None
    """Folder with local copies of the annotation repos as <owner>/<repo> (default: the Hugging Face hub)."""
    batch_size: int = 32
    """Encode batch size."""
    pooling: str = "embedding"
    """embedding: our models' embedding token (any method); last: plain last-token pooling (baselines)."""
    adapter: str | None = None
    """PEFT/LoRA adapter merged into the backbone (with --pooling last, e.g. a VLM2Vec adapter)."""
    think_tokens: int | None = None
    """Use only the first k think tokens on the query side (default: the checkpoint's K)."""
    reference_ndcg: bool = False
    """Pair graded qrels with documents as the reference harness does (its ordering bug) for comparability."""
    limit: int | None = None
    """Evaluate only the first N queries of each task (smoke runs; scores are then not comparable)."""
    pred_top_k: int = 100
    """Candidates written per query to <task>_pred.jsonl (best first, with scores)."""
    data_version: str = "v2.1"
    """MMEB-v2 data version recorded with the scores (releases v2.0.0, v2.0.1, v2.1 differ)."""
    hf_cache: str | None = None
    """datasets cache folder (default: the datasets library's own)."""
    device: str | None = None
    """cpu or cuda (default: cuda when available; cuda:LOCAL_RANK under torchrun)."""


# ---------------------------------------------------------------- small utilities
def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _checkpoint_stamp(path: str | None) -> list:
    """Names, sizes and modification times of a local checkpoint's files, so that a checkpoint retrained
    in place gets new cache keys (a hub id or a missing path stamps as itself)."""
    if not path or not os.path.isdir(path):
        return [path]
    root = Path(path)
    return sorted((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in root.rglob("*") if f.is_file())


def _content(items) -> list:
    """What an item's embedding depends on (texts and media paths; corpus pages by name), for cache keys."""
    out = []
    for x in items:
        d = vars(x) if hasattr(x, "to_input") else x
        img = d.get("image")
        out.append((d.get("text"), img if isinstance(img, str) or img is None else "corpus", d.get("video")))
    return out


class _Dist:
    """torchrun ranks (one process, rank 0, when not launched by torchrun)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1:
            import torch
            import torch.distributed as dist
            if not dist.is_initialized():
                if torch.cuda.is_available():  # one GPU per rank, also for NCCL's barriers (else all on GPU 0)
                    torch.cuda.set_device(self.local_rank)
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()


# ---------------------------------------------------------------- encoding with per-stage caches
def _encode_stage(encoder, items: list, path: Path, key: str, *, role: str, cfg: MMEBEvalConfig, dist: _Dist,
                  desc: str) -> np.ndarray:
    """Embeddings of `items`, from `path` when a finished stage with the same key is there."""
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        return np.load(path)
    mine = list(range(dist.rank, len(items), dist.world))
    chunks = []
    kw = {"think_tokens": cfg.think_tokens} if role == "query" and cfg.think_tokens is not None else {}
    bs = cfg.batch_size
    for s in tqdm(range(0, len(mine), bs), desc=desc, disable=dist.rank != 0 or not mine, unit="batch"):
        part = [items[i] for i in mine[s:s + bs]]
        part = [x.to_input() if hasattr(x, "to_input") else x for x in part]
        chunks.append(np.asarray(encoder.encode(part, batch_size=bs, show_progress_bar=False, role=role, **kw),
                                 dtype=np.float32))
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if dist.world > 1:
        save_npy_atomic(path.with_name(f"{path.stem}.rank{dist.rank}.npy"), emb)
        dist.barrier()
        if dist.rank == 0:
            shards = [np.load(path.with_name(f"{path.stem}.rank{r}.npy")) for r in range(dist.world)]
            dim = max(x.shape[1] for x in shards if x.size) if any(x.size for x in shards) else 0
            emb = np.zeros((len(items), dim), np.float32)
            for r, x in enumerate(shards):
                if x.size:
                    emb[r::dist.world] = x
        dist.barrier()
    if dist.rank == 0:
        save_npy_atomic(path, emb)
        write_atomic(meta, json.dumps({"key": key, "n": len(items)}))
    dist.barrier()
    return np.load(path)


# ---------------------------------------------------------------- scoring
def score_task(data: TaskData, q_emb: np.ndarray, c_emb: np.ndarray, *, reference_ndcg: bool = False,
               top_k: int = 100) -> tuple[dict, list[dict]]:
    """Per-task metrics (means over queries) and per-query predictions (top_k candidates with scores)."""
    index = {name: i for i, name in enumerate(data.candidates)}
    names = np.asarray(list(data.candidates), dtype=object)
    per_query, preds = [], []
    keep = max(top_k, 10)
    for s in range(0, len(data.query_ids), 256):  # global pools: one matrix product per block of queries
        block = q_emb[s:s + 256] @ c_emb.T if data.pools is None else None
        for i in range(s, min(s + 256, len(data.query_ids))):
            qrels = data.qrels[i]
            if block is None:  # local pool: its own (short) candidate list
                pool_names = np.asarray(data.pools[i], dtype=object)
                scores = c_emb[[index[n] for n in data.pools[i]]] @ q_emb[i]
                grades = np.asarray([qrels.get(n, 0.0) for n in data.pools[i]])
            else:  # global pool: every candidate; grades set by index (pools can hold 10^4-10^5 documents)
                pool_names, scores = names, block[i - s]
                grades = np.zeros(len(names))
                for n, g in qrels.items():
                    if n in index:
                        grades[index[n]] = g
            order = rank_order(scores, grades)
            relevant = np.flatnonzero(grades[order] > 0)
            ranked = list(pool_names[order[:keep]])
            per_query.append(graded_metrics(ranked, qrels, reference_ndcg=reference_ndcg,
                                            first=int(relevant[0]) if len(relevant) else None))
            preds.append({"query_id": data.query_ids[i], "ranked": ranked[:top_k],
                          "scores": [round(float(x), 6) for x in scores[order[:top_k]]],
                          "relevant": {k: v for k, v in qrels.items() if v > 0}})
    return mean_graded(per_query), preds


# ---------------------------------------------------------------- reports
def summarize(per_task: dict[str, dict], settings: dict) -> dict:
    """Leaderboard layout: headline metric per task; plain means per group, per modality and overall."""
    def mean(names):
        vals = [per_task[n][TASKS[n].metric] for n in names]
        return float(np.mean(vals)) if vals else None

    done = [n for n in TASKS if n in per_task]  # registry order
    groups = {g: mean([n for n in done if TASKS[n].group == g]) for g in GROUPS}
    modalities = {m: mean([n for n in done if TASKS[n].modality == m]) for m in ("image", "video", "visdoc")}
    return {"settings": settings, "overall": mean(done), "num_tasks": len(done), "complete": len(done) == len(TASKS),
            "by_modality": {k: v for k, v in modalities.items() if v is not None},
            "by_group": {k: v for k, v in groups.items() if v is not None},
            "by_task": {n: {"group": TASKS[n].group, "metric": TASKS[n].metric, "score": per_task[n][TASKS[n].metric]}
                        for n in done}}


def summary_markdown(s: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"# MMEB-v2 results ({s['num_tasks']} of {len(TASKS)} tasks)", ""]
    lines += [f"- {k}: {v}" for k, v in s["settings"].items()] + [""]
    lines += ["| overall | " + " | ".join(s["by_modality"]) + " |", "|---" * (1 + len(s["by_modality"])) + "|",
              f"| {pct(s['overall'])} | " + " | ".join(pct(v) for v in s["by_modality"].values()) + " |", ""]
    lines += ["| " + " | ".join(s["by_group"]) + " |", "|---" * len(s["by_group"]) + "|",
              "| " + " | ".join(pct(v) for v in s["by_group"].values()) + " |", ""]
    lines += ["| task | group | metric | score |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['group']} | {r['metric']} | {pct(r['score'])} |" for n, r in s["by_task"].items()]
    if not s["complete"]:
        lines += ["", "Not every MMEB-v2 task was evaluated: the overall score is over the tasks above only."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- driver
def model_settings(encoder, cfg: MMEBEvalConfig) -> dict:
    conf = getattr(encoder, "config", None)
    out = dataclasses.asdict(conf) if dataclasses.is_dataclass(conf) else dict(conf or {})
    if cfg.think_tokens is not None:
        out["think_tokens_used"] = cfg.think_tokens
    return out


def run(cfg: MMEBEvalConfig, encoder=None) -> dict | None:
    """Evaluate the selected tasks; returns the summary on rank 0 (None on other ranks)."""
    tasks: list[Task] = select(cfg.tasks)
    if not cfg.data_root:
        raise ValueError("--data-root is required (the folder holding the MMEB-v2 media)")
    dist = _Dist()
    if encoder is None:
        encoder = load_encoder(cfg, dist)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": cfg.model, "data_version": cfg.data_version, "reference_ndcg": cfg.reference_ndcg,
                "limit": cfg.limit, "model_config": model_settings(encoder, cfg)}
    enc_key = _fingerprint(cfg.model, settings["model_config"], cfg.limit, _checkpoint_stamp(cfg.model),
                           _checkpoint_stamp(cfg.adapter))
    # the score files are checked before the data is read: the data's location is part of their key
    score_key = _fingerprint(enc_key, cfg.reference_ndcg, cfg.pred_top_k, cfg.data_version,
                             str(cfg.data_root), str(cfg.annotations))
    for t in tasks:
        score_file = out / f"{t.name}_score.json"
        if score_file.is_file() and json.loads(score_file.read_text()).get("settings_key") == score_key:
            continue  # finished in an earlier run
        data = read_task(t, cfg.data_root, annotations=cfg.annotations, cache_dir=cfg.hf_cache, limit=cfg.limit)
        cache = out / "cache" / t.name
        cache.mkdir(parents=True, exist_ok=True)
        names = list(data.candidates)
        q_emb = _encode_stage(encoder, data.queries, cache / "queries.npy", _fingerprint(enc_key, data.query_ids,
                                                                                        _content(data.queries)),
                              role="query", cfg=cfg, dist=dist, desc=f"{t.name} queries")
        c_emb = _encode_stage(encoder, [data.candidates[n] for n in names], cache / "candidates.npy",
                              _fingerprint(enc_key, names, _content(data.candidates.values())), role="document", cfg=cfg, dist=dist,
                              desc=f"{t.name} candidates")
        if dist.rank == 0:
            metrics, preds = score_task(data, q_emb, c_emb, reference_ndcg=cfg.reference_ndcg, top_k=cfg.pred_top_k)
            write_atomic(out / f"{t.name}_pred.jsonl", "".join(json.dumps(p) + "\n" for p in preds))
            record = {**metrics, "task": t.name, "group": t.group, "modality": t.modality, "headline": t.metric,
                      "pool": t.pool, "num_candidates": len(names), "notes": data.notes,
                      "data_version": cfg.data_version, "settings_key": score_key}
            write_atomic(score_file, json.dumps(record, indent=2))  # written last: marks the task done
            print(f"{t.name}: {t.metric} = {100 * metrics[t.metric]:.2f} ({metrics['num_queries']} queries)")
        dist.barrier()
    if dist.rank != 0:
        return None
    per_task = {t.name: json.loads((out / f"{t.name}_score.json").read_text()) for t in tasks}
    summary = summarize(per_task, settings)
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    write_atomic(out / "summary.md", summary_markdown(summary))
    return summary


def load_encoder(cfg: MMEBEvalConfig, dist: _Dist | None = None):
    import torch

    from ...model import TTEFlashModel
    from ..last_token import LastTokenEncoder
    if not cfg.model:
        raise ValueError("--model is required (a checkpoint directory or hub id)")
    loaders = {"embedding": lambda: TTEFlashModel.from_pretrained(cfg.model),
               "last": lambda: LastTokenEncoder.from_pretrained(cfg.model, cfg.adapter)}
    if cfg.pooling not in loaders or (cfg.adapter and cfg.pooling != "last"):
        raise ValueError(f"--pooling must be one of {sorted(loaders)} (--adapter needs --pooling last), got {cfg.pooling!r}")
    model = loaders[cfg.pooling]()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and dist is not None and dist.world > 1:
        device = f"cuda:{dist.local_rank}"
    return model.to(device).eval()


__all__ = ["MMEBEvalConfig", "RANK_METRICS", "run", "score_task", "summarize"]
