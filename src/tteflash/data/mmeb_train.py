"""The MMEB training mixture (parquet as released) and gold CoT traces (JSONL), as trainer examples.

Parquet rows (TIGER-Lab/MMEB-train, one file per subset): `qry` (instruction + text, `<|image_1|>` where
the image goes), `qry_image_path`, `pos_text`, `pos_image_path`, optional `neg_text`, `neg_image_path`
(a string or a list). Image paths are relative to an image root. Each example gets the id
`<subset>:<row>` that CoT traces are keyed by.

Traces: one JSON object per line, `{"id": "<subset>:<row>", "cot": "..."}`. Examples come out in the
shape the trainer consumes (task, query, cot, candidates, target, hard_negatives, cand_ids).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..eval.mmeb.readers import IMG1  # MMEB's image placeholder; the model inserts its own vision tokens


class MMEBTrainError(ValueError):
    """Malformed training data or traces: the message names the file, row or line."""


@dataclasses.dataclass
class TrainExample:
    id: str
    task: str
    query: dict
    candidates: list[dict]          # the positive first, then the given negatives
    cot: str | None = None
    target: int = 0
    hard_negatives: list[int] = dataclasses.field(default_factory=list)
    cand_ids: list[str] = dataclasses.field(default_factory=list)


def _side(text, image, root: Path, where: str, check_media: bool) -> dict:
    text = text or ""
    if image:
        path = root / image
        if check_media and not path.is_file():
            raise MMEBTrainError(f"{where}: image file not found: {path}")
        return {"text": text.replace(IMG1, ""), "image": str(path)}
    return {"text": text, "image": None}


def _as_list(v) -> list:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


def read_mmeb_train(parquet: str | os.PathLike, image_root: str | os.PathLike, *, subset: str | None = None,
                    check_media: bool = True, limit: int | None = None) -> list[TrainExample]:
    """Examples of one MMEB-train parquet file; subset defaults to the file's parent folder name."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading MMEB-train needs `pyarrow`: pip install 'tteflash[mmeb]'") from None
    parquet, root = Path(parquet), Path(image_root)
    if not parquet.is_file():
        raise MMEBTrainError(f"MMEB-train parquet not found: {parquet}")
    subset = subset or parquet.parent.name
    table = pq.read_table(parquet)
    missing = {"qry", "qry_image_path", "pos_text", "pos_image_path"} - set(table.column_names)
    if missing:
        raise MMEBTrainError(f"{parquet}: missing columns {sorted(missing)} (have {table.column_names})")
    rows = table.slice(0, limit).to_pylist() if limit is not None else table.to_pylist()
    out = []
    for i, r in enumerate(rows):
        where = f"{parquet} row {i}"
        negs = list(zip(_as_list(r.get("neg_text")), _as_list(r.get("neg_image_path"))))
        cands = [_side(r["pos_text"], r["pos_image_path"], root, where, check_media)]
        cands += [_side(t, p, root, where, check_media) for t, p in negs if (t or p)]
        ids = [f"{c['text']}|{c['image']}" for c in cands]  # content identity: duplicate targets in a batch de-duplicate
        out.append(TrainExample(f"{subset}:{i}", subset, _side(r["qry"], r["qry_image_path"], root, where, check_media),
                                cands, hard_negatives=list(range(1, len(cands))), cand_ids=ids))
    return out


def read_traces(path: str | os.PathLike) -> dict[str, str]:
    """id -> CoT from a JSONL file; a malformed line or a repeated id is an error naming the line."""
    traces: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise MMEBTrainError(f"{path} line {n}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or not isinstance(rec.get("cot"), str):
                raise MMEBTrainError(f'{path} line {n}: expected {{"id": str, "cot": str}}')
            if rec["id"] in traces:
                raise MMEBTrainError(f"{path} line {n}: id {rec['id']!r} appears twice")
            traces[rec["id"]] = rec["cot"]
    return traces


def attach_traces(examples: list[TrainExample], traces: dict[str, str], *, require: bool = False) -> int:
    """Set each example's gold CoT from `traces`; returns how many have none (an error when require)."""
    missing = [ex.id for ex in examples if ex.id not in traces]
    if require and missing:
        raise MMEBTrainError(f"{len(missing)} examples have no CoT trace (first: {missing[0]!r})")
    for ex in examples:
        ex.cot = traces.get(ex.id, ex.cot)
    return len(missing)
