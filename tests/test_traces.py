"""`tte-flash traces`: a fake OpenAI-compatible server on loopback (real HTTP, errors, timeouts) and a tiny local model."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import random_image
from tteflash.cli import main
from tteflash.data.mmeb_train import TrainExample, read_traces
from tteflash.traces import LocalTeacher, OpenAITeacher, generate_traces, parse_answer

GOOD = "<think>The image shows a {x}. Its shape and colour match.</think> It is a {x}, so the target follows."


class FakeAPI(BaseHTTPRequestHandler):
    """Behaviour chosen by the query text: ok, flaky (500 then ok), slow (times out once), bad (malformed), http400."""
    seen: dict[str, int] = {}
    images: list[str] = []
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["model"] == "teacher-x"
        parts = body["messages"][0]["content"]
        text = next(p["text"] for p in parts if p["type"] == "text")
        kind = next(k for k in ("ok", "flaky", "slow", "bad", "http400") if f"kind-{k} " in text)
        with self.lock:
            n = self.seen[kind] = self.seen.get(kind, 0) + 1
            self.images += [p["image_url"]["url"][:22] for p in parts if p["type"] == "image_url"]
        if kind == "http400":
            return self._send(400, {"error": "bad request"})
        if kind == "flaky" and n == 1:
            return self._send(500, {"error": "overloaded"})
        if kind == "slow" and n == 1:
            time.sleep(1.5)
        answer = "no reasoning here" if kind == "bad" else GOOD.format(x=kind)
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


@pytest.fixture
def server():
    FakeAPI.seen, FakeAPI.images = {}, []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def examples(tmp_path, kinds):
    img = tmp_path / "img.png"
    random_image(28, 28, 0).save(img)
    return [TrainExample(f"VOC2007:{i}", "VOC2007", {"text": f"kind-{k} what is shown?", "image": str(img)},
                         [{"text": k, "image": None}]) for i, k in enumerate(kinds)]


def test_parse_answer():
    assert parse_answer(GOOD.format(x="cat")) == ("The image shows a cat. Its shape and colour match.",
                                                  "It is a cat, so the target follows.")
    for bad in ("", "no tags", "<think>x</think>", "<think></think> y", "<think>a</think> b <think>c</think>"):
        assert parse_answer(bad) is None


def test_api_teacher_retries_timeouts_failures_and_resume(server, tmp_path):
    ex = examples(tmp_path, ["ok", "flaky", "slow", "bad", "http400"])
    teacher = OpenAITeacher(server, "teacher-x", timeout=0.5)
    out = tmp_path / "traces.jsonl"
    counts = generate_traces(ex, teacher, out, workers=3, retries=2, backoff=0.01, progress=False)
    assert counts == {"ok": 3, "failed": 2, "skipped": 0}
    traces = read_traces(out)  # the reader the trainer uses accepts the file
    assert traces == {"VOC2007:0": "It is a ok, so the target follows.", "VOC2007:1": "It is a flaky, so the target follows.",
                      "VOC2007:2": "It is a slow, so the target follows."}
    failed = {r["id"]: r for r in map(json.loads, (tmp_path / "traces.jsonl.failed.jsonl").read_text().splitlines())}
    assert failed["VOC2007:3"]["attempts"] == 3 and failed["VOC2007:3"]["last_output"] == "no reasoning here"
    assert failed["VOC2007:4"]["attempts"] == 1 and "HTTP 400" in failed["VOC2007:4"]["error"]  # not retried
    assert FakeAPI.seen == {"ok": 1, "flaky": 2, "slow": 2, "bad": 3, "http400": 1}
    assert set(FakeAPI.images) == {"data:image/png;base64,"}
    # resume: nothing is asked again; a torn last line (killed mid-write) is dropped and redone
    with open(out, "a") as f:
        f.write('{"id": "VOC2007:9", "co')
    more = examples(tmp_path, ["ok", "flaky", "slow", "bad", "http400", "ok"])
    counts = generate_traces(more, teacher, out, workers=2, retries=2, backoff=0.01, progress=False)
    assert counts == {"ok": 1, "failed": 0, "skipped": 5} and FakeAPI.seen["ok"] == 2
    assert len(read_traces(out)) == 4
    counts = generate_traces(more, teacher, out, retries=0, retry_failed=True, progress=False)
    assert counts == {"ok": 0, "failed": 2, "skipped": 4}


def test_cli_traces_with_a_tiny_local_model(model0, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "VOC2007").mkdir()
    random_image(28, 28, 1).save(tmp_path / "a.png")
    pq.write_table(pa.table({"qry": ["<|image_1|>\nwhat is shown"], "qry_image_path": ["a.png"],
                             "pos_text": ["a cat"], "pos_image_path": [""]}), tmp_path / "VOC2007" / "train.parquet")
    model0.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "t.jsonl"
    args = ["traces", "--data", str(tmp_path / "VOC2007" / "train.parquet"), "--image-root", str(tmp_path),
            "--teacher", str(tmp_path / "teacher"), "--out", str(out), "--retries", "1", "--max-tokens", "8"]
    assert main(args) == 0
    # a random tiny model cannot follow the format: recorded as a failure, never kept as a trace
    assert read_traces(out) == {}
    rec = json.loads((tmp_path / "t.jsonl.failed.jsonl").read_text())
    assert rec["id"] == "VOC2007:0" and rec["attempts"] == 2 and "malformed" in rec["error"]
    assert isinstance(rec["last_output"], str)
    teacher = LocalTeacher(model0, max_tokens=4)
    assert isinstance(teacher("describe", [random_image(28, 28, 2)]), str)


def test_unreadable_image_is_a_recorded_failure_not_a_crash(server, tmp_path):
    ex = examples(tmp_path, ["ok", "ok"])
    ex[1].query["image"] = str(tmp_path / "missing.png")
    out = tmp_path / "traces.jsonl"
    counts = generate_traces(ex, OpenAITeacher(server, "teacher-x"), out, workers=2, retries=1, backoff=0.01,
                             progress=False)
    assert counts == {"ok": 1, "failed": 1, "skipped": 0}
    rec = json.loads((tmp_path / "traces.jsonl.failed.jsonl").read_text())
    assert rec["id"] == "VOC2007:1" and rec["attempts"] == 1 and "missing.png" in rec["error"]
    assert set(read_traces(out)) == {"VOC2007:0"}
