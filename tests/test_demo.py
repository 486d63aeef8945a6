"""End to end on a tiny base: `make base` and `make demo` code paths, results layout, reuse, CLI."""
import json
from pathlib import Path

import numpy as np
import pytest

from tteflash.cli import main as cli
from tteflash.data import bench
from tteflash.train.demo import METHODS, readouts, run_demo
from tteflash.train.trainer import TrainConfig



def test_tiny_base_is_written_whole(tiny_base):
    info = json.loads((Path(tiny_base) / "base_info.json").read_text())
    stages = ("perception", "reading", "reasoning", "answering")
    assert [info[f"{stage}_stage"]["steps"] for stage in stages] == [2, 2, 2, 2]
    assert (Path(tiny_base) / "model.safetensors").exists()
    assert set(info["reasoning"]["by_task"]) == set(bench.TASK_NAMES)
    assert set(info["answering"]) == set(bench.QUESTION_KINDS)
    for work in (".work", *(f".work-{s}" for s in stages[1:])):  # the work folders are removed once the base is written
        assert not Path(tiny_base + work).exists()


def test_demo_writes_results_in_the_documented_layout(tiny_base, tmp_path):
    cfg = TrainConfig(steps=2, batch_size=4, hard_negatives=2, log_every=1)
    results = run_demo(tiny_base, str(tmp_path), cfg, n_test=2, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"].keys() == {*METHODS, "explicit_cot_oracle"}
    b = saved["benchmark"]
    assert b["n_test_queries"] == 18 and len(b["tasks"]) == 9 and b["chance_hit@1"] == pytest.approx(0.1)
    assert {"device", "torch", "transformers"} <= saved["environment"].keys()
    for name, r in saved["methods"].items():
        assert set(r["overall"]) == {"hit@1", "hit@5", "ndcg@5", "mrr"}
        assert all(0 <= v <= 1 for v in r["overall"].values())
        assert len(r["by_task"]) == 9 and len(r["by_group"]) == 6
        assert r["encode_ms_per_query"] > 0 and r["encode_ms_per_query_b1"] > 0 and r["train_seconds"] > 0
    # encode costs are the ones timed alone after the parallel training and evaluation
    for name in METHODS:
        timed = json.loads((tmp_path / name / "encode_cost.json").read_text())
        for key, (ms_batch, ms_b1) in timed.items():
            assert saved["methods"][key]["encode_ms_per_query"] == ms_batch
            assert saved["methods"][key]["encode_ms_per_query_b1"] == ms_b1
    for name in ("tte_flash_k8", "explicit_cot"):
        assert saved["methods"][name]["cot_loss_first"] > 0
    assert "cot_loss_first" not in saved["methods"]["no_think"]
    report = (tmp_path / "report.md").read_text()
    assert all(name in report for name in saved["methods"])
    # a second run reuses every finished method instead of retraining
    again = run_demo(tiny_base, str(tmp_path), cfg, n_test=2, progress=False)
    assert again["methods"] == results["methods"]
    # ... but never under other settings: old results would be reported as the new ones
    with pytest.raises(ValueError, match="no_think holds a run trained with other or unrecorded settings"):
        run_demo(tiny_base, str(tmp_path), TrainConfig(steps=3, batch_size=4, hard_negatives=2), n_test=2, progress=False)


def test_cli_encode_writes_npy_and_reports_bad_input(tiny_base, tmp_path, capsys):
    out = tmp_path / "e.npy"
    assert cli(["encode", "--model", tiny_base, "--out", str(out), "red circle", "digits 7 2"]) == 0
    emb = np.load(out)
    assert emb.shape[0] == 2 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    bad = tmp_path / "bad.npy"
    assert cli(["encode", "--model", tiny_base, "--out", str(bad), "ok", "   "]) == 2
    assert "input 1" in capsys.readouterr().err and not bad.exists()


def test_training_in_worker_processes_gives_the_same_model(tiny_base, tmp_path):
    import torch
    from safetensors.torch import load_file
    from tteflash.train.demo import run_in_parallel, train_method

    cfg = TrainConfig(steps=2, batch_size=4, hard_negatives=2, log_every=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = train_method("tte_flash_k8", tiny_base, str(tmp_path / "here"), cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    run_in_parallel([dict(name=n, base=tiny_base, out=str(tmp_path / "workers"), cfg=cfg) for n in ("tte_flash_k8", "no_think")], 2)
    a = load_file(tmp_path / "here" / "tte_flash_k8" / "model" / "model.safetensors")
    b = load_file(tmp_path / "workers" / "tte_flash_k8" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    base = load_file(f"{tiny_base}/model.safetensors")
    assert any(not torch.equal(base[k], a[k]) for k in a if k in base)  # the two steps did train
    assert (tmp_path / "workers" / "no_think" / "trained.json").exists()
    assert here["train_steps"] == 2 and here["cot_loss_first"] > 0
    # a finished training is reused only with the settings it was trained with
    assert train_method("tte_flash_k8", tiny_base, str(tmp_path / "here"), cfg, progress=False) == here
    with pytest.raises(ValueError, match="tte_flash_k8 holds a run trained with other or unrecorded settings"):
        train_method("tte_flash_k8", tiny_base, str(tmp_path / "here"), TrainConfig(steps=3, batch_size=4), progress=False)
    with pytest.raises(ValueError, match="trained with other or unrecorded settings"):
        train_method("tte_flash_k8", tiny_base, str(tmp_path / "here"), cfg, overrides={"think_tokens": 4}, progress=False)
    old = tmp_path / "here" / "tte_flash_k8" / "trained.json"  # written before settings were recorded
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items() if k != "trained_with"}))
    with pytest.raises(ValueError, match="unrecorded settings \\(None\\)"):
        train_method("tte_flash_k8", tiny_base, str(tmp_path / "here"), cfg, progress=False)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_in_parallel([], 0)


def test_a_failing_worker_fails_the_call(tmp_path):
    from tteflash.train.demo import run_in_parallel

    empty = tmp_path / "not_a_checkpoint"
    empty.mkdir()
    jobs = [dict(name=n, base=str(empty), out=str(tmp_path / "out"), cfg=TrainConfig(steps=1)) for n in ("no_think", "tte_flash_k8")]
    with pytest.raises(Exception, match="not_a_checkpoint"):
        run_in_parallel(jobs, 2)
    assert not (tmp_path / "out" / "no_think" / "trained.json").exists()


def test_cli_rejects_a_worker_count_below_one(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["demo", "--workers", "0"])
    assert e.value.code == 2 and "--workers: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("args, problem", [(["--tasks-per-batch", "10"], "tasks_per_batch=10 needs at most 9"),
                                           (["--schedule", "nope"], "unknown schedule 'nope'")])
def test_cli_demo_names_a_bad_training_setting_before_any_worker_starts(monkeypatch, capsys, args, problem):
    from tteflash.train import demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: pytest.fail("a bad setting reached run_demo"))
    assert cli(["demo", *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: {problem}")


def test_cli_demo_trains_the_demo_budget_unless_told_otherwise(monkeypatch):
    from tteflash.train import demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda base, out, cfg, **kw: seen.append(cfg))
    cli(["demo"])
    cli(["demo", "--steps", "7"])
    assert [cfg.steps for cfg in seen] == [demo.DEMO_STEPS, 7] and demo.DEMO_STEPS != TrainConfig().steps


def test_runs_of_another_base_at_the_same_path_are_not_reused(tiny_base, tmp_path):
    import shutil

    from tteflash.train.demo import _load_if_same, _trained_with
    from tteflash.files import write_atomic

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    cfg = TrainConfig(steps=2)
    done = tmp_path / "run" / "trained.json"
    done.parent.mkdir()
    write_atomic(str(done), json.dumps({"x": 1, "trained_with": _trained_with("no_think", str(base), cfg, None)}))
    assert _load_if_same(str(done), _trained_with("no_think", str(base), cfg, None), cfg) == {"x": 1}
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the base rebuilt in place: other weights, same path
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="holds a run trained with other or unrecorded settings"):
        _load_if_same(str(done), _trained_with("no_think", str(base), cfg, None), cfg)


def test_every_explicit_cot_configuration_gets_its_oracle_read_out():
    assert readouts("explicit_cot") == {"explicit_cot": {}, "explicit_cot_oracle": {"gold_cot": True}}
    assert readouts("explicit_cot_t01")["explicit_cot_t01_oracle"] == {"gold_cot": True}
    assert set(readouts("tte_flash_nested", [1, 2])) == {"tte_flash_nested", "tte_flash_nested@1", "tte_flash_nested@2"}
    assert not any(k.endswith("_oracle") for k in readouts("no_think"))


def test_a_step_draws_its_examples_from_tasks_per_batch_tasks_in_equal_shares():
    from collections import Counter

    from tteflash.train.demo import examples_for_step

    seen = Counter()
    for step in range(60):
        batch = examples_for_step(step, TrainConfig(batch_size=8, tasks_per_batch=2))
        shares = Counter(x.task for x in batch)
        assert sorted(shares.values()) == [4, 4]
        seen.update(shares)
        assert [x.cot for x in batch] == [x.cot for x in examples_for_step(step, TrainConfig(batch_size=8, tasks_per_batch=2))]
    assert set(seen) == set(bench.TASK_NAMES)  # every task is drawn (60 steps: missing one has p < 1e-5)
    every = Counter(x.task for x in examples_for_step(0, TrainConfig(batch_size=9, tasks_per_batch=0)))
    assert set(every.values()) == {1} and len(every) == len(bench.TASK_NAMES)
    with pytest.raises(ValueError, match="tasks_per_batch=10 needs at most 9"):
        examples_for_step(0, TrainConfig(batch_size=16, tasks_per_batch=10))
    with pytest.raises(ValueError, match="tasks_per_batch must be >= 0"):
        TrainConfig(tasks_per_batch=-1)


def test_training_examples_never_repeat_across_steps_and_seeds(monkeypatch):
    from tteflash.train import demo

    drawn = []
    monkeypatch.setattr(demo.bench, "make_example", lambda task, split, index: drawn.append((task, split, index)))
    for t in (0, 2):
        drawn.clear()
        for seed in (0, 1):
            for step in range(50):
                demo.examples_for_step(step, TrainConfig(batch_size=8, tasks_per_batch=t, seed=seed))
        assert len(set(drawn)) == len(drawn) == 800 and {split for _, split, _ in drawn} == {"train"}
