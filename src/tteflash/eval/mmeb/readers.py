"""Readers for the official MMEB-v2 release: annotations through `datasets.load_dataset`, media on disk.

Every reader turns one task into a `TaskData`: model inputs for the queries, a candidate table keyed by
the reference harness's candidate names (de-duplicated by name, first occurrence wins, as the reference
does), the per-query pools (local) or the whole table (global), and per-query qrels (name -> grade).
Prompts are assembled as the reference does for a Qwen2-VL backbone (`<visual token> + " " + instruction
+ " " + text`, no chat template); the model places the visual tokens itself, so the leading token is
stripped and the rest (leading space included) is the text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .registry import Task

IMG, VID = "<|image_pad|>", "<|video_pad|>"  # the reference's visual tokens for Qwen2-VL
IMG1 = "<|image_1|>"                           # the placeholder inside MMEB's instruction strings
FRAME_EXTS = (".jpg", ".jpeg", ".png")


class MMEBDataError(RuntimeError):
    """Missing or malformed MMEB data: the message names the task and the file or column."""


@dataclasses.dataclass
class TaskData:
    task: Task
    query_ids: list[str]
    queries: list[dict]                   # model inputs {"text", "image", "video"}
    candidates: dict[str, "Candidate"]    # name -> input, in first-seen order (the encode order)
    pools: list[list[str]] | None         # local pools; None = every candidate (global)
    qrels: list[dict[str, float]]         # per query: candidate name -> grade (> 0 relevant)
    notes: list[str] = dataclasses.field(default_factory=list)

    def pool(self, i: int) -> list[str]:
        return list(self.candidates) if self.pools is None else self.pools[i]


@dataclasses.dataclass
class Candidate:
    text: str
    image: object = None                  # path, or a callable loading a PIL image (corpus-embedded pages)
    video: list[str] | None = None

    def to_input(self) -> dict:
        img = self.image() if callable(self.image) else self.image
        return {"text": self.text, "image": img, "video": self.video}


# ---------------------------------------------------------------- prompt and media helpers
def prompt(visual: str | None, instruction: str, text: str | None = None) -> str:
    """The reference's process_input_text for Qwen2-VL."""
    p = instruction + (" " + text if text else "")
    return f"{visual} {p}" if visual else p


def strip_visual(p: str) -> str:
    """Drop a leading visual token: the model inserts its own vision tokens before the text."""
    for tok in (IMG, VID):
        if p.startswith(tok):
            return p[len(tok):]
    return p


def model_input(p: str, image=None, video=None) -> dict:
    """Reference prompt -> model input (the visual token dropped only when there is a visual)."""
    return {"text": strip_visual(p) if image is not None or video is not None else p, "image": image, "video": video}


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def sample_frames(frame_dir: Path, n: int | None, task: str) -> list[str]:
    """n frames uniformly over the naturally sorted frame files (all of them when there are fewer)."""
    if not frame_dir.is_dir():
        raise MMEBDataError(f"{task}: video frame folder not found: {frame_dir}")
    frames = [str(frame_dir / f) for f in sorted(os.listdir(frame_dir), key=_natural_key)
              if os.path.splitext(f)[1].lower() in FRAME_EXTS]
    if not frames:
        raise MMEBDataError(f"{task}: no frame images (jpg/png) in {frame_dir}")
    if n is not None and n <= len(frames):
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, n, dtype=int)]  # truncating, as the reference
    return frames


def media_file(path: Path, task: str) -> str:
    if not path.is_file():
        raise MMEBDataError(f"{task}: media file not found: {path}")
    return str(path)


def load_split(repo: str, subset: str | None, split: str, *, annotations: str | None, cache_dir: str | None, task: str):
    """`datasets.load_dataset(repo, subset, split=...)` from the hub, or from `annotations/<owner>/<repo>`."""
    try:
        import datasets
    except ImportError:
        raise ImportError("MMEB-v2 needs the `datasets` package: pip install 'tteflash[mmeb]'") from None
    path = repo
    if annotations is not None:
        local = Path(annotations) / repo
        if not local.is_dir():
            raise MMEBDataError(f"{task}: annotations not found: {local} (expected a local copy of the "
                                f"Hugging Face dataset repo {repo!r} under --annotations)")
        path = str(local)
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(path, subset, split=split, cache_dir=cache_dir)
    except (ValueError, OSError) as e:  # unknown subset or split, repo not found, no network
        raise MMEBDataError(f"{task}: cannot load annotations {path!r} subset={subset!r} split={split!r}: {e}") from None


def _column(row: dict, name: str, task: str):
    if name not in row:
        raise MMEBDataError(f"{task}: annotation column {name!r} missing (have {sorted(row)})")
    return row[name]


class _Builder:
    """Accumulates queries and the name-keyed candidate table."""

    def __init__(self, task: Task, local: bool):
        self.task, self.local = task, local
        self.ids, self.queries, self.pools, self.qrels = [], [], [], []
        self.cands: dict[str, Candidate] = {}

    def add_candidate(self, name: str, make: Callable[[], Candidate]) -> str:
        if name not in self.cands:  # first occurrence wins, exactly once (the reference de-duplicates by name)
            self.cands[name] = make()
        return name

    def add_query(self, qid, inp: dict, pool: list[str] | None, qrels: dict[str, float]):
        self.ids.append(str(qid))
        self.queries.append(inp)
        self.pools.append(pool)
        self.qrels.append(qrels)

    def build(self) -> TaskData:
        return TaskData(self.task, self.ids, self.queries, self.cands, self.pools if self.local else None, self.qrels)


# ---------------------------------------------------------------- image tasks (MMEB_Test_Instruct schema)
def _image_query(row, root: Path, t: Task, strip_newline_inst: bool) -> dict:
    inst = row.get("qry_inst", "") or ""
    inst = "\n" + inst.replace(IMG1, "").strip() if strip_newline_inst else inst.replace(IMG1, "")
    p = prompt(IMG, inst, _column(row, "qry_text", t.name)).replace(" \n", "\n") + "\n"
    return model_input(p, image=media_file(root / _column(row, "qry_img_path", t.name), t.name))


def _text_targets(b: _Builder, row, t: Task) -> list[str]:
    return [b.add_candidate(c, lambda c=c: Candidate(c)) for c in _column(row, "tgt_text", t.name)]


def _image_targets(b: _Builder, row, root: Path, t: Task, caption_names: bool, newline_without_caption: bool):
    inst = (row.get("tgt_inst", "") or "").replace(IMG1, "")
    caps, paths = list(_column(row, "tgt_text", t.name)), list(_column(row, "tgt_img_path", t.name))
    if len(caps) != len(paths):
        raise MMEBDataError(f"{t.name}: tgt_text has {len(caps)} entries but tgt_img_path {len(paths)}")
    with_caption = bool(caps) and bool(caps[0].strip())
    names = []
    for cap, path in zip(caps, paths):
        if with_caption:
            text = prompt(IMG, inst + " " + cap).replace(" \n", "\n") + "\n"
        else:
            text = prompt(IMG, inst).replace(" \n", "\n") + ("\n" if newline_without_caption else "")
        name = f"{path}:{cap.strip(chr(34))}" if caption_names else path
        names.append(b.add_candidate(name, lambda text=text, path=path: Candidate(
            strip_visual(text), image=media_file(root / path, t.name))))
    return names


# How each reference image parser shapes its prompts: query (t2i: text only; "qa": "\n" + stripped
# instruction; "plain": instruction as is) and targets (text labels, or images with the newline rule).
IMAGE_STYLES = {
    "image_cls": dict(query="plain", targets="text"),
    "image_i2t": dict(query="plain", targets="text"),
    "image_qa": dict(query="qa", targets="text"),
    "image_t2i": dict(query="t2i", targets="image", caption_names=False, newline=True),
    "image_i2i_vg": dict(query="qa", targets="image", caption_names=True, newline=False),
}


def _read_image(t: Task, rows, root: Path) -> TaskData:
    b = _Builder(t, local=True)
    style = IMAGE_STYLES[t.parser]
    for i, row in enumerate(rows):
        if style["query"] == "t2i":
            inst = (row.get("qry_inst", "") or "").replace(IMG1, IMG)
            p = inst + " " + _column(row, "qry_text", t.name) + "\n" + ("\n" if t.args.get("visdial") else "")
            q = model_input(p)
        else:
            q = _image_query(row, root, t, strip_newline_inst=style["query"] == "qa")
        if style["targets"] == "text":
            pool = _text_targets(b, row, t)
        else:
            pool = _image_targets(b, row, root, t, style["caption_names"], style["newline"])
        if not pool:
            raise MMEBDataError(f"{t.name}: query {i} has no candidates")
        b.add_query(i, q, pool, {pool[0]: 1.0})  # MMEB lists the gold candidate first
    return b.build()


# ---------------------------------------------------------------- video tasks
def _video_name(row, t: Task) -> str:
    col = t.args.get("id_column")
    if col:
        return str(_column(row, col, t.name))
    return os.path.splitext(os.path.basename(str(_column(row, t.args["video_column"], t.name))))[0]


def _read_video_cls(t: Task, rows, root: Path, data_root: Path) -> TaskData:
    b = _Builder(t, local=t.parser == "ssv2")
    q_text = prompt(VID, t.args["instruction"])
    labels_file = data_root / "video-tasks" / "labels" / f"{t.name}.txt"
    fixed = [x.strip() for x in labels_file.read_text().splitlines() if x.strip()] if labels_file.is_file() else None
    for label in fixed or []:  # the reference's fixed label list, when the user supplies it
        b.add_candidate(label, lambda label=label: Candidate(label))
    for row in rows:
        vid = str(_column(row, "video_id", t.name))
        frames = sample_frames(root / vid, t.num_frames, t.name)
        label = str(_column(row, "pos_text", t.name))
        pool = None
        if t.parser == "ssv2":
            pool = [b.add_candidate(c, lambda c=c: Candidate(c)) for c in _column(row, "neg_text", t.name)]
        else:
            b.add_candidate(label, lambda: Candidate(label))
        b.add_query(vid, model_input(q_text, video=frames), pool, {label: 1.0})
    data = b.build()
    if t.pool == "global" and fixed is None:
        data.notes.append(f"label pool = the {len(data.candidates)} labels seen in the annotations "
                          f"({labels_file} not found)")
    return data


def _read_video_ret(t: Task, rows, root: Path) -> TaskData:
    b = _Builder(t, local=False)
    tgt = prompt(VID, t.args["target_instruction"])
    for row in rows:
        cap = _column(row, t.args["caption_column"], t.name)
        cap = cap[0] if isinstance(cap, (list, tuple)) else cap
        name = _video_name(row, t)
        b.add_candidate(name, lambda name=name: Candidate(
            strip_visual(tgt), video=sample_frames(root / name, t.num_frames, t.name)))
        b.add_query(len(b.ids), model_input(prompt(None, t.args["query_instruction"], cap)), None, {name: 1.0})
    return b.build()


def _qa_query(t: Task, question: str) -> str:
    return f"{VID} {t.args['prompt']} {question}"


def _option_text(option: str) -> str:
    """"A. text" -> "text", exactly as the reference cuts its options (quirks kept: it scores with them)."""
    return option[option.find(". "):].strip(". ")


def _qa_template(question: str, options: list[str]) -> str:
    """The reference's qa_template: the question, then "Options:" and one "(A) option" line each."""
    return (question + "\nOptions:\n" + "".join(f"({chr(65 + j)}) {o}\n" for j, o in enumerate(options))).rstrip()


def _qa_nextqa(t: Task, row: dict, i: int):
    options = [str(_column(row, f"a{j}", t.name)) for j in range(5)]
    q = _qa_template(_qa_query(t, _column(row, "question", t.name)), options)
    vid = str(_column(row, "video", t.name))
    answer = options[int(_column(row, "answer", t.name))]
    return q, vid, options, options, answer, f"{vid}:{row.get('qid', i)}"  # NExTQA's qid is per video


def _qa_videomme(t: Task, row: dict, i: int):
    options = [str(o) for o in _column(row, "options", t.name)]
    q = _qa_query(t, _column(row, "question", t.name) + "\n" + "\n".join(options))
    answer = options["ABCDEFGH".index(str(_column(row, "answer", t.name)))]
    return (q, str(_column(row, "videoID", t.name)), options, [_option_text(o) for o in options], answer,
            row.get("question_id", i))


def _qa_egoschema(t: Task, row: dict, i: int):
    options = [str(o) for o in _column(row, "option", t.name)]
    q = _qa_query(t, _column(row, "question", t.name) + " ".join(options))  # no separator, as the reference
    answer = options[int(_column(row, "answer", t.name))]
    return (q, str(_column(row, "video_idx", t.name)), options, [_option_text(o) for o in options], answer,
            row.get("question_idx", i))


def _qa_mvbench(t: Task, row: dict, i: int):
    cands = [str(c) for c in _column(row, "candidates", t.name)]
    answer = str(_column(row, "answer", t.name))
    if answer not in cands:
        raise MMEBDataError(f"{t.name}: row {i}: answer {answer!r} is not among its candidates {cands}")
    options = [f"({chr(65 + j)}) {c}" for j, c in enumerate(cands)]  # names and texts: "(A) candidate"
    q = _qa_template(_qa_query(t, _column(row, "question", t.name)), cands)
    subset = str(_column(row, "subset", t.name))
    return q, f"{subset}/{_column(row, 'video', t.name)}", options, options, options[cands.index(answer)], f"{subset}:{i}"


ACTIVITYNET_OPTIONS = ["yes", "no"]


def _qa_activitynet(t: Task, row: dict, i: int):
    q = _qa_query(t, _column(row, "question", t.name) + "? (A) yes; (B) no.")
    answer = str(_column(row, "answer", t.name))
    if answer not in ACTIVITYNET_OPTIONS:
        raise MMEBDataError(f"{t.name}: row {i}: answer {answer!r} is not yes/no")
    return (q, f"v_{_column(row, 'video_name', t.name)}", ACTIVITYNET_OPTIONS, ACTIVITYNET_OPTIONS, answer,
            row.get("question_id", i))


# Video QA parsers (registry `parser`) -> row shape: (question, frame folder, candidate names, candidate
# texts, gold name, query id). Columns and prompts follow the reference's parser of the same name.
QA_STYLES = {"nextqa": _qa_nextqa, "videomme": _qa_videomme, "egoschema": _qa_egoschema,
             "mvbench": _qa_mvbench, "activitynetqa": _qa_activitynet}


def _read_video_qa(t: Task, rows, root: Path) -> TaskData:
    b = _Builder(t, local=True)
    for i, row in enumerate(rows):
        q, vid, names, texts, answer, qid = QA_STYLES[t.parser](t, row, i)
        pool = [b.add_candidate(n, lambda x=x: Candidate(x)) for n, x in zip(names, texts)]
        b.add_query(qid, model_input(q, video=sample_frames(root / vid, t.num_frames, t.name)), pool, {answer: 1.0})
    return b.build()


def _read_moment(t: Task, rows, root: Path) -> TaskData:
    """Pre-extracted frames: <frames>/<video>/query/ and one folder per clip, positives named positive*."""
    b = _Builder(t, local=True)
    tgt = prompt(VID, t.args["target_instruction"])
    for i, row in enumerate(rows):
        video = os.path.splitext(os.path.basename(str(_column(row, "video_path", t.name))))[0]
        vdir = root / video
        frames = sample_frames(vdir / "query", t.num_frames, t.name)
        clips = sorted(d for d in os.listdir(vdir) if d != "query" and (vdir / d).is_dir()) if vdir.is_dir() else []
        pos = [f"{video}/{c}" for c in clips if c.startswith("positive")]
        if not pos:
            raise MMEBDataError(f"{t.name}: no positive clip folder (positive*) under {vdir}")
        pool = [b.add_candidate(f"{video}/{c}", lambda c=c: Candidate(
            strip_visual(tgt), video=sample_frames(vdir / c, t.num_frames, t.name))) for c in clips]
        q = model_input(prompt(VID, t.args["query_instruction"], _column(row, "query", t.name)), video=frames)
        b.add_query(i, q, pool, {p: 1.0 for p in pos})
    return b.build()


MOMENTSEEKER_QUERY = {"video": "Find the clip that corresponds to the given sentence and video segment:",
                      "image": "Select the video clip that aligns with the given text and image:",
                      "text": "Find the clip that corresponds to the given text:"}
MOMENTSEEKER_TARGET = "Understand the content of the provided video clip."


def _read_momentseeker(t: Task, rows, root: Path) -> TaskData:
    """The reference's momentseeker parser: text, image (`.jpg`) or video (`.mp4`) queries; clips listed per
    query (positive_frames / negative_frames, `output_path`); frames under <frames>/video_frames/<path with
    "/" -> "_", no .mp4>/, every saved frame used (the release saves 8)."""
    b = _Builder(t, local=True)
    tgt = strip_visual(prompt(VID, MOMENTSEEKER_TARGET))

    def clip(path: str) -> str:
        name = "video_frames/" + str(path).replace("/", "_").split(".mp4")[0]
        return b.add_candidate(name, lambda: Candidate(tgt, video=sample_frames(root / name, None, t.name)))

    for i, row in enumerate(rows):
        query, given = _column(row, "query", t.name), str(_column(row, "input_frames", t.name) or "")
        if given.endswith(".mp4"):
            frames = sample_frames(root / "video_frames" / given.split(".mp4")[0].replace("/", "_"), None, t.name)
            q = model_input(prompt(VID, MOMENTSEEKER_QUERY["video"], query), video=frames)
        elif given.endswith(".jpg"):
            q = model_input(prompt(IMG, MOMENTSEEKER_QUERY["image"], query),
                            image=media_file(root / f"query_{given}", t.name))
        else:
            q = model_input(prompt(None, MOMENTSEEKER_QUERY["text"], query))
        pos = [clip(e["output_path"]) for e in _column(row, "positive_frames", t.name)]
        if not pos:
            raise MMEBDataError(f"{t.name}: query {i} lists no positive clip")
        neg = [clip(e["output_path"]) for e in _column(row, "negative_frames", t.name)]
        b.add_query(i, q, pos + neg, {p: 1.0 for p in pos})
    return b.build()


# ---------------------------------------------------------------- visual documents (BEIR: queries, corpus, qrels)
def _page_file(name: str, hashed: bool) -> str:
    if not hashed:
        return f"{name}.png"
    base, ext = os.path.splitext(name)  # VisRAG: long names shortened as the reference stores them
    return base[:50] + "_" + hashlib.md5(name.encode("utf-8")).hexdigest()[:8] + ext


def _read_beir(t: Task, splits: dict, root: Path) -> TaskData:
    queries, corpus, qrels_rows = splits["queries"], splits["corpus"], splits["qrels"]
    qrels: dict[str, dict[str, float]] = {}
    for r in qrels_rows:
        qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = float(r["score"])
    hashed = t.args.get("hashed_names", False)
    corpus_rows = {}
    for i, cid in enumerate(corpus["corpus-id"]):
        corpus_rows.setdefault(str(cid), i)
    tgt = strip_visual(prompt(IMG, t.args["target_instruction"]))

    def page(name: str) -> Candidate:
        path = root / _page_file(name, hashed)
        if path.is_file():
            return Candidate(tgt, image=str(path))
        if name in corpus_rows and "image" in corpus.column_names:  # the page image shipped in the corpus
            return Candidate(tgt, image=lambda i=corpus_rows[name]: corpus[i]["image"])
        raise MMEBDataError(f"{t.name}: page image not found: {path} (and not in the corpus)")

    b = _Builder(t, local=False)
    skipped = 0
    for row in queries:
        qid = str(row["query-id"])
        if qid not in qrels:
            skipped += 1
            continue
        for name in qrels[qid]:  # the reference adds qrels' documents before the corpus
            b.add_candidate(name, lambda name=name: page(name))
        b.add_query(qid, model_input(prompt(None, t.args["query_instruction"], row["query"])), None, qrels[qid])
    for name in corpus_rows:
        b.add_candidate(name, lambda name=name: page(name))
    data = b.build()
    if skipped:
        data.notes.append(f"{skipped} queries without qrels skipped")
    return data


# ---------------------------------------------------------------- entry point
def read_task(t: Task, data_root: str | os.PathLike, *, annotations: str | None = None,
              cache_dir: str | None = None, limit: int | None = None) -> TaskData:
    """Load one task's annotations and resolve its media under data_root. limit: first N queries (smoke runs)."""
    data_root = Path(data_root)
    root = data_root / t.media
    if t.max_queries is not None:
        limit = t.max_queries if limit is None else min(limit, t.max_queries)
    load = lambda subset, split=t.split: load_split(t.repo, subset, split, annotations=annotations,  # noqa: E731
                                                    cache_dir=cache_dir, task=t.name)
    if t.parser == "beir":
        splits = {s: load(s) for s in ("queries", "corpus", "qrels")}
        if limit is not None:
            splits["queries"] = splits["queries"].select(range(min(limit, len(splits["queries"]))))
        return _read_beir(t, splits, root)
    if t.args.get("subsets"):  # MVBench: one subset per source, concatenated with a `subset` column
        import datasets
        parts = [load(sub) for sub in t.args["subsets"]]
        rows = datasets.concatenate_datasets([d.add_column("subset", [sub] * len(d))
                                              for sub, d in zip(t.args["subsets"], parts)])
    else:
        rows = load(t.subset)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return READERS[t.parser](t, rows, root, data_root)


READERS = {  # parser name (registry) -> reader(task, rows, media folder, data root)
    **{name: lambda t, rows, root, _: _read_image(t, rows, root) for name in IMAGE_STYLES},
    "video_cls": _read_video_cls,
    "ssv2": _read_video_cls,
    "video_ret": lambda t, rows, root, _: _read_video_ret(t, rows, root),
    **{name: lambda t, rows, root, _: _read_video_qa(t, rows, root) for name in QA_STYLES},
    "moment_retrieval": lambda t, rows, root, _: _read_moment(t, rows, root),
    "momentseeker": lambda t, rows, root, _: _read_momentseeker(t, rows, root),
}
