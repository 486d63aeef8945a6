"""Gold CoT traces from a teacher VLM, for training on MMEB-train (`tte-flash traces`).

A teacher answers one prompt per example, built from a template for the example's task type
(TEMPLATES). It must reply in two parts:

    <think>step-by-step reasoning</think>
    a short final reasoning

Teachers: any OpenAI-compatible chat endpoint (e.g. a vLLM server; images are sent as base64 data
URIs) or a local checkpoint through `TTEFlashModel.generate_text` (raw prompt, no chat template:
meant for small models and tests; serve real teachers with vLLM so their chat template applies).

Output: JSONL `{"id", "cot", "think", "teacher"}` per example (`cot` is the short final reasoning,
the part our models are trained to produce), appended as answers arrive, so a killed run resumes
where it stopped. Examples whose answers stay malformed (or that fail for good) after the retries go
to `<out>.failed.jsonl` with the error and the last output. They are never written as traces.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .files import write_atomic

FORMAT = ("Answer in exactly two parts: first your step-by-step reasoning inside <think></think>, "
          "then one or two sentences of final reasoning that lead to the target.")
TEMPLATES = {  # task type -> prompt; {query} and {target} are the example's texts
    "classification": "Query: {query}\nCorrect label: {target}\nExplain which visual evidence identifies the label. " + FORMAT,
    "vqa": "Question about the image: {query}\nCorrect answer: {target}\nReason from what the image shows to the answer. " + FORMAT,
    "retrieval": "Query: {query}\nMatching target: {target}\nDescribe what a matching target must contain. " + FORMAT,
    "grounding": "Query: {query}\nTarget region: {target}\nReason about which object or region is meant. " + FORMAT,
    "video": "Query about the video: {query}\nTarget: {target}\nReason over what happens in the frames. " + FORMAT,
    "document": "Query: {query}\nTarget page: {target}\nReason about what the relevant page must show. " + FORMAT,
}
TASK_TYPES = {  # MMEB-train subsets -> template (anything else: retrieval)
    **{k: "classification" for k in ("ImageNet_1K", "N24News", "HatefulMemes", "VOC2007", "SUN397")},
    **{k: "vqa" for k in ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W")},
    **{k: "grounding" for k in ("MSCOCO", "Visual7W-Pointing", "RefCOCO", "RefCOCO-Matching")},
}
_PATTERN = re.compile(r"^\s*<think>(.+?)</think>\s*(\S.*?)\s*$", re.S)


class TeacherError(RuntimeError):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def parse_answer(text: str) -> tuple[str, str] | None:
    """(think, final) from a well-formed answer, None otherwise."""
    m = _PATTERN.match(text or "")
    if not m or "<think>" in m.group(2) or "</think>" in m.group(2):
        return None
    return m.group(1).strip(), m.group(2).strip()


def build_prompt(example) -> str:
    kind = TASK_TYPES.get(example.task, "retrieval")
    target = example.candidates[example.target]
    return TEMPLATES[kind].format(query=example.query.get("text", "").strip(), target=(target.get("text") or "").strip())


# ---------------------------------------------------------------- teachers
def _data_uri(image) -> str:
    from .processing import to_pil
    buf = io.BytesIO()
    to_pil(image, "teacher image").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class OpenAITeacher:
    """POST {base_url}/chat/completions (OpenAI-compatible); images as base64 data URIs."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    max_tokens: int = 512

    @property
    def name(self) -> str:
        return f"{self.model}@{self.base_url}"

    def __call__(self, prompt: str, images: list) -> str:
        content = [{"type": "image_url", "image_url": {"url": _data_uri(im)}} for im in images]
        content.append({"type": "text", "text": prompt})
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": content}],
                           "temperature": 0, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", body, headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 429 and 5xx are worth retrying; other 4xx are not
            raise TeacherError(f"HTTP {e.code}: {e.read()[:200]!r}", retryable=e.code == 429 or e.code >= 500) from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            raise TeacherError(f"{type(e).__name__}: {e}", retryable=True) from None
        except json.JSONDecodeError:
            raise TeacherError("reply is not JSON", retryable=True) from None
        try:
            return reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"unexpected reply: {str(reply)[:200]}", retryable=True) from None


class LocalTeacher:
    """A local checkpoint's greedy generation (TTEFlashModel.generate_text)."""

    def __init__(self, model, name: str = "local", max_tokens: int = 256):
        import threading
        self.model, self.name, self.max_tokens = model, name, max_tokens
        self._lock = threading.Lock()  # one generation at a time on the shared model

    def __call__(self, prompt: str, images: list) -> str:
        item = {"text": prompt, "image": images[0] if images else None}
        with self._lock:
            return self.model.generate_text([item], max_new_tokens=self.max_tokens)[0]


# ---------------------------------------------------------------- the resumable run
def _done_ids(path: Path) -> set[str]:
    """Ids recorded in a JSONL file; a torn last line (a kill mid-write) is ignored and rewritten."""
    if not path.is_file():
        return set()
    ids, good = set(), []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        try:
            ids.add(json.loads(line)["id"])
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    if len(good) != len(lines):  # rewrite through a temporary file: a kill here never loses the good lines
        write_atomic(path, "".join(x + "\n" for x in good))
    return ids


def _one(example, teacher, retries: int, backoff: float) -> dict:
    prompt = build_prompt(example)
    images = [example.query["image"]] if example.query.get("image") is not None else []
    last, error = None, None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            last = teacher(prompt, images)
        except TeacherError as e:
            error = str(e)
            if not e.retryable:
                return {"id": example.id, "status": "failed", "error": error, "attempts": attempt + 1, "last_output": last}
            continue
        except Exception as e:  # e.g. an unreadable image: this example fails for good, the run goes on
            return {"id": example.id, "status": "failed", "error": f"{type(e).__name__}: {e}", "attempts": attempt + 1,
                    "last_output": last}
        parsed = parse_answer(last)
        if parsed:
            return {"id": example.id, "status": "ok", "think": parsed[0], "cot": parsed[1], "attempts": attempt + 1}
        error = "malformed answer (expected <think>...</think> then a final reasoning)"
    return {"id": example.id, "status": "failed", "error": error, "attempts": retries + 1, "last_output": last}


def generate_traces(examples, teacher, out: str | os.PathLike, *, workers: int = 8, retries: int = 3,
                    backoff: float = 1.0, retry_failed: bool = False, progress: bool = True) -> dict:
    """Traces for the examples not yet in `out` (nor in `<out>.failed.jsonl` unless retry_failed)."""
    from tqdm.auto import tqdm
    out = Path(out)
    failed = out.with_name(out.name + ".failed.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    if retry_failed and failed.exists():
        failed.unlink()  # those examples are tried again; failures are recorded afresh
    skip = _done_ids(out) | (set() if retry_failed else _done_ids(failed))
    todo = [ex for ex in examples if ex.id not in skip]
    counts = {"ok": 0, "failed": 0, "skipped": len(examples) - len(todo)}
    with open(out, "a", encoding="utf-8") as ok_f, open(failed, "a", encoding="utf-8") as bad_f, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_one, ex, teacher, retries, backoff) for ex in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="traces", disable=not progress):
            rec = fut.result()
            status = rec.pop("status")
            counts[status] += 1
            if status == "ok":
                rec = {"id": rec["id"], "cot": rec["cot"], "think": rec["think"], "teacher": teacher.name}
            f = ok_f if status == "ok" else bad_f
            f.write(json.dumps(rec) + "\n")  # one write per line, flushed: a kill loses at most this line
            f.flush()
    return counts
