"""The MMEB-v2 harness: hand-computed scores, resume after a kill, and `tte-flash eval mmeb` end to end."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

import mmeb_fixtures
from tteflash.cli import main
from tteflash.eval.mmeb.harness import MMEBEvalConfig, run, score_task, summarize
from tteflash.eval.mmeb.readers import read_task
from tteflash.eval.mmeb.registry import TASKS


def read(fx, name):
    ann, data, cache = fx
    return read_task(TASKS[name], data, annotations=ann, cache_dir=cache)


def test_scores_local_pools_hand_computed(mmeb_fixture):
    d = read(mmeb_fixture, "ImageNet-1K")  # candidates labelA, labelB, labelC; gold labelA then labelB
    c = np.eye(3, dtype=np.float32)
    q = np.array([[0.9, 0.1, 0.0],     # labelA best: rank 1
                  [0.5, 0.5, 0.0]],    # labelB (gold, listed first in its pool) ties labelA: rank 2
                 np.float32)
    m, preds = score_task(d, q, c)
    assert m == pytest.approx({"hit@1": 0.5, "hit@5": 1.0, "hit@10": 1.0, "ndcg_linear@5": (1 + 1 / math.log2(3)) / 2,
                               "ndcg_linear@10": (1 + 1 / math.log2(3)) / 2, "mrr": 0.75, "num_queries": 2})
    assert preds[1]["ranked"] == ["labelA", "labelB", "labelC"] and preds[1]["scores"] == [0.5, 0.5, 0.0]


def test_scores_global_pool_and_graded_qrels(mmeb_fixture):
    d = read(mmeb_fixture, "MSR-VTT")  # 3 captions, pool = the 2 de-duplicated videos retA, retB
    m, _ = score_task(d, np.array([[1.0], [1.0], [-1.0]], np.float32), np.array([[0.2], [0.7]], np.float32))
    # q0 -> retA: rank 2; q1 -> retB: rank 1; q2 -> retA (scores -0.2, -0.7): rank 1
    assert m["hit@1"] == pytest.approx(2 / 3) and m["mrr"] == pytest.approx((0.5 + 1 + 1) / 3)
    g = read(mmeb_fixture, "ViDoRe_esg_reports_human_labeled_v2")  # qrels pageA: 1, pageB: 2; pool of 4 pages
    c = np.array([[0.9], [0.1], [0.5], [0.3]], np.float32)  # ranking pageA, pageC, pageD, pageB
    m, preds = score_task(g, np.ones((1, 1), np.float32), c)
    assert preds[0]["ranked"] == ["pageA", "pageC", "pageD", "pageB"]
    ideal = 2 + 1 / math.log2(3)
    assert m["ndcg_linear@5"] == pytest.approx((1 + 2 / math.log2(5)) / ideal)
    assert m["hit@1"] == 1.0 and m["mrr"] == 1.0
    # metrics do not depend on how many candidates the predictions keep
    c = np.array([[0.1], [0.9], [0.5], [0.3]], np.float32)  # pageB, pageC, pageD, pageA
    full, _ = score_task(g, np.ones((1, 1), np.float32), c)
    short, preds = score_task(g, np.ones((1, 1), np.float32), c, top_k=1)
    assert short == full and preds[0]["ranked"] == ["pageB"] and full["mrr"] == 1.0


class HashEncoder:
    """A deterministic stand-in: each input's vector is seeded by its content; counts and can fail calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after
        self.config = None

    def encode(self, items, batch_size=32, show_progress_bar=None, role="query", **kw):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        out = []
        for it in items:
            h = hashlib.md5((role + it["text"]).encode())
            img = it.get("image")
            h.update(img.encode() if isinstance(img, str) else (img.tobytes() if img is not None else b""))
            for f in it.get("video") or []:
                h.update(f.encode())
            v = np.random.default_rng(int(h.hexdigest()[:8], 16)).standard_normal(8)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)


def _cfg(fx, out, **kw):
    ann, data, cache = fx
    return MMEBEvalConfig(model="hash", data_root=data, annotations=ann, hf_cache=cache, out=str(out),
                          tasks=",".join(mmeb_fixtures.TASKS), batch_size=2, **kw)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_killed_run_resumes_to_identical_files(mmeb_fixture, tmp_path):
    clean = tmp_path / "clean"
    s = run(_cfg(mmeb_fixture, clean), HashEncoder())
    assert s["num_tasks"] == 12 and not s["complete"]
    assert set(s["by_modality"]) == {"image", "video", "visdoc"} and len(s["by_group"]) == 12
    heads = [json.loads((clean / f"{n}_score.json").read_text())[TASKS[n].metric] for n in mmeb_fixtures.TASKS]
    assert s["overall"] == pytest.approx(np.mean(heads))
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(mmeb_fixture, killed), HashEncoder(fail_after=9))  # dies inside a later task's stage
    done = [n for n in mmeb_fixtures.TASKS if (killed / f"{n}_score.json").exists()]
    assert 0 < len(done) < 12
    again = HashEncoder()
    run(_cfg(mmeb_fixture, killed), again)
    assert _files(killed) == _files(clean)
    first = HashEncoder()
    run(_cfg(mmeb_fixture, tmp_path / "fresh"), first)
    assert again.calls < first.calls  # finished tasks and stages were not recomputed
    idle = HashEncoder(fail_after=0)
    run(_cfg(mmeb_fixture, killed), idle)  # everything cached: no encode call at all
    assert _files(killed) == _files(clean)


def test_checkpoint_retrained_in_place_is_not_served_from_cache(mmeb_fixture, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights v1")
    cfg = _cfg(mmeb_fixture, tmp_path / "out")
    cfg.model, cfg.tasks = str(ckpt), "OK-VQA"
    run(cfg, HashEncoder())
    run(cfg, HashEncoder(fail_after=0))  # unchanged checkpoint: scores and embeddings come from the cache
    (ckpt / "model.safetensors").write_bytes(b"weights v2, retrained")
    with pytest.raises(KeyboardInterrupt):  # changed checkpoint: it must encode again
        run(cfg, HashEncoder(fail_after=0))


def test_reference_ndcg_flag_changes_only_graded_ndcg(mmeb_fixture, tmp_path):
    from tteflash.eval.metrics import graded_metrics
    name = "ViDoRe_esg_reports_human_labeled_v2"
    scores = {}
    for flag in (False, True):
        cfg = _cfg(mmeb_fixture, tmp_path / str(flag), reference_ndcg=flag)
        cfg.tasks = name
        assert run(cfg, HashEncoder())["settings"]["reference_ndcg"] is flag
        scores[flag] = json.loads((tmp_path / str(flag) / f"{name}_score.json").read_text())
    pred = json.loads((tmp_path / "True" / f"{name}_pred.jsonl").read_text())
    assert pred == json.loads((tmp_path / "False" / f"{name}_pred.jsonl").read_text())
    qrels = {"pageA": 1.0, "pageB": 2.0}
    for flag in (False, True):
        want = graded_metrics(pred["ranked"], qrels, reference_ndcg=flag)
        assert {k: scores[flag][k] for k in want} == pytest.approx(want)
    assert scores[True]["hit@1"] == scores[False]["hit@1"] and scores[True]["mrr"] == scores[False]["mrr"]


def test_summary_layout():
    per_task = {"ImageNet-1K": {"hit@1": 0.5}, "OK-VQA": {"hit@1": 1.0}, "ViDoRe_arxivqa": {"ndcg_linear@5": 0.25}}
    s = summarize(per_task, {"model": "m"})
    assert s["by_group"] == {"image-CLS": 0.5, "image-QA": 1.0, "ViDoRe-v1": 0.25}
    assert s["by_modality"] == {"image": 0.75, "visdoc": 0.25}
    assert s["overall"] == pytest.approx(1.75 / 3)  # mean over tasks, not over modalities


def test_cli_end_to_end_tiny_model(mmeb_fixture, model0, tmp_path, capsys):
    ann, data, cache = mmeb_fixture
    model0.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    args = ["eval", "mmeb", "--model", str(tmp_path / "model"), "--data-root", data, "--annotations", ann,
            "--hf-cache", cache, "--out", str(out), "--tasks", ",".join(mmeb_fixtures.TASKS), "--device", "cpu"]
    assert main(args) == 0
    for n in mmeb_fixtures.TASKS:
        score = json.loads((out / f"{n}_score.json").read_text())
        assert {"hit@1", "hit@5", "hit@10", "ndcg_linear@5", "ndcg_linear@10", "mrr", "num_queries"} <= set(score)
        preds = [json.loads(line) for line in (out / f"{n}_pred.jsonl").read_text().splitlines()]
        assert len(preds) == score["num_queries"] and all(p["ranked"] for p in preds)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_tasks"] == 12 and summary["settings"]["model_config"]["think_tokens"] == 0
    assert "| overall |" in (out / "summary.md").read_text()
    # a missing media file is reported by name, not as a traceback
    bad = ["eval", "mmeb", "--model", str(tmp_path / "model"), "--data-root", str(tmp_path), "--annotations", ann,
           "--hf-cache", cache, "--out", str(tmp_path / "o2"), "--tasks", "OK-VQA", "--device", "cpu"]
    assert main(bad) == 2
    assert "media file not found" in capsys.readouterr().err


@pytest.mark.slow  # two torch processes start up: about 20 s on 2 cores (make test-slow)
def test_torchrun_shards_give_the_same_files(mmeb_fixture, tmp_path):
    """Two CPU ranks (gloo) encode strided shards; rank 0 merges: files equal a one-process run."""
    import os
    import subprocess
    import sys
    ann, data, cache = mmeb_fixture
    tasks = "ImageNet-1K,MSR-VTT,ViDoRe_arxivqa"
    script = tmp_path / "shard_run.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_mmeb_harness import HashEncoder
from tteflash.eval.mmeb.harness import MMEBEvalConfig, run
run(MMEBEvalConfig(model="hash", data_root={data!r}, annotations={ann!r}, hf_cache={cache!r},
                   out=sys.argv[1], tasks={tasks!r}, batch_size=1), HashEncoder())
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(tmp_path / "two")], check=True, env=env, capture_output=True, timeout=300)
    run(MMEBEvalConfig(model="hash", data_root=data, annotations=ann, hf_cache=cache, out=str(tmp_path / "one"),
                       tasks=tasks, batch_size=1), HashEncoder())
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    assert (tmp_path / "two" / "cache" / "MSR-VTT" / "queries.rank1.npy").exists()


def test_last_token_baseline_through_the_harness(mmeb_fixture, model0, tmp_path):
    from tteflash.eval.last_token import LastTokenEncoder
    ann, data, cache = mmeb_fixture
    model0.save_pretrained(tmp_path / "plain")
    enc = LastTokenEncoder.from_pretrained(str(tmp_path / "plain"))
    x = [{"text": "a cat", "image": None, "video": None}, {"text": "a dog"}]
    e = enc.encode(x, batch_size=2)
    assert e.shape == (2, 64) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    # the last prompt token's state, not the embedding token's: differs from the no-think model's vector
    assert not np.allclose(e, model0.encode(x))
    assert np.allclose(enc.encode(x[1]), e[1], atol=1e-5)
    out = tmp_path / "out"
    args = ["eval", "mmeb", "--model", str(tmp_path / "plain"), "--pooling", "last", "--data-root", data,
            "--annotations", ann, "--hf-cache", cache, "--out", str(out), "--tasks", "OK-VQA,ViDoSeek-page",
            "--device", "cpu"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["model_config"]["method"] == "last_token" and summary["num_tasks"] == 2
    assert main(args[:4] + ["--pooling", "mean"] + args[6:]) == 2
