"""The design-study runner: config validation, equal budgets, resumable runs, results layout, plots."""
import json

import pytest

from tteflash.train import study as S

CONFIG = """
base: {base}
out: {out}
n_test: 1
seeds: [0, 1]
train: {{steps: 2, batch_size: 2, hard_negatives: 1, checkpoint_every: 100, log_every: 1}}
main: [no_think, tte_flash_k2]
runs:
  - {{name: no_think, model: {{think_tokens: 0}}}}
  - {{name: tte_flash_k2, model: {{think_tokens: 2}}, k_mode: parallel}}
  - {{name: tte_flash_nested, model: {{think_tokens: 2}}, train: {{nested_think: true}}, eval_think: [1, 2], seeds: [2]}}
"""


def _write(tmp_path, text, **kw) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(text.format(**kw))
    return str(path)


def test_study_runs_resumes_and_writes_the_documented_layout(tiny_base, tmp_path, monkeypatch):
    out = tmp_path / "study"
    study = S.Study.load(_write(tmp_path, CONFIG, base=tiny_base, out=out))
    results = S.run_study(study, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    names = [(r["name"], r["seed"]) for r in saved["runs"]]
    assert names == [("no_think", 0), ("tte_flash_k2", 0), ("no_think", 1), ("tte_flash_k2", 1),  # main first
                     ("tte_flash_nested", 2), ("tte_flash_nested_k1", 2), ("tte_flash_nested_k2", 2)]  # its own seed, not the study's
    for r in saved["runs"]:
        assert {"name", "config", "seed", "overall", "by_group", "encode_ms_per_query", "train_seconds"} <= set(r)
        assert 0 <= r["overall"]["hit@1"] <= 1 and r["config"]["train"]["steps"] == 2  # equal budgets
        assert r["config"]["train"]["seed"] == r["seed"]
    # K scaling: no_think is K = 0 of every curve; nested comes from one checkpoint at two budgets
    modes = {(p["mode"], p["k"]): p for p in saved["k_scaling"]}
    assert set(modes) == {("parallel", 0), ("parallel", 2), ("nested", 0), ("nested", 1), ("nested", 2)}
    runs = {(r["name"], r["seed"]): r["overall"]["hit@1"] for r in saved["runs"]}
    p2 = modes[("parallel", 2)]
    assert p2["n_seeds"] == 2 and p2["hit@1_mean"] == pytest.approx((runs["tte_flash_k2", 0] + runs["tte_flash_k2", 1]) / 2)
    assert any("no_think" in c for c in saved["conclusions"])
    # encode costs are timed alone, once per configuration (its first seed), and shared by its seeds
    cost = json.loads((out / "seed2" / "tte_flash_nested" / "encode_cost.json").read_text())
    assert set(cost) == {"tte_flash_nested", "tte_flash_nested@1", "tte_flash_nested@2"}
    nested = [r for r in saved["runs"] if r["name"] == "tte_flash_nested_k1"][0]
    assert [nested["encode_ms_per_query"], nested["encode_ms_per_query_b1"]] == cost["tte_flash_nested@1"]
    assert not (out / "seed1" / "no_think" / "encode_cost.json").exists()
    assert len({r["encode_ms_per_query"] for r in saved["runs"] if r["name"] == "no_think"}) == 1
    report = (out / "report.md").read_text()
    assert "tte_flash_nested_k1" in report and "Think-budget scaling" in report
    for png in ("k_scaling.png", "quality_vs_cost.png", "by_group.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # resumable: finished runs are read back, not retrained
    monkeypatch.setattr("tteflash.train.demo.train", lambda *a, **k: pytest.fail("retrained a finished run"))
    monkeypatch.setattr("tteflash.train.demo.multiprocessing.get_context",
                        lambda *a: pytest.fail("started worker processes with nothing left to train"))
    assert S.run_study(study, progress=False) == results
    # --finished-only: a run without its result is left out, and nothing trains
    (out / "seed1" / "tte_flash_k2" / "result.json").unlink()
    partial = S.run_study(study, progress=False, finished_only=True)
    assert [(r["name"], r["seed"]) for r in partial["runs"]] == [n for n in names if n != ("tte_flash_k2", 1)]


def test_study_config_errors_name_the_problem(tmp_path):
    bad_model = CONFIG.replace("think_tokens: 0}", "think_tokens: 0, thinking: 3}")
    with pytest.raises(ValueError, match="no_think: unknown model settings \\['thinking'\\]"):
        S.Study.load(_write(tmp_path, bad_model, base="b", out="o"))
    bad_schedule = CONFIG.replace("nested_think: true", "schedule: alternate")
    with pytest.raises(ValueError, match="unknown schedule"):
        S.Study.load(_write(tmp_path, bad_schedule, base="b", out="o"))
    with pytest.raises(ValueError, match="unknown keys \\['stesp'\\]"):
        S.Study.load(_write(tmp_path, CONFIG + "stesp: 3\n", base="b", out="o"))


def test_seeds_read_different_training_data():
    from tteflash.train.demo import examples_for_step
    from tteflash.train.trainer import TrainConfig

    for t in (0, 2):
        a, b = (examples_for_step(0, TrainConfig(batch_size=4, tasks_per_batch=t, seed=s)) for s in (0, 1))
        assert [x.cot for x in a] != [x.cot for x in b]
        if t == 0:  # every task in turn: the same task order in every seed
            assert [x.task for x in a] == [x.task for x in b]


def test_quick_selects_its_subset_with_its_own_budget(tmp_path):
    quick = CONFIG + "quick: {{runs: [no_think, tte_flash_nested], seeds: [5], train: {{steps: 1}}, n_test: 2, out: q}}\n"
    study = S.Study.load(_write(tmp_path, quick, base="b", out="o"), quick=True)
    assert [r.name for r in study.runs] == ["no_think", "tte_flash_nested"]
    assert study.seeds == [5] and all(r.seeds is None for r in study.runs)  # the run's own seeds give way
    assert study.train["steps"] == 1 and study.train["batch_size"] == 2 and (study.n_test, study.out) == (2, "q")
    assert study.main == ["no_think"]
    full = S.Study.load(_write(tmp_path, quick, base="b", out="o"))
    assert len(full.runs) == 3 and full.train["steps"] == 2 and full.seeds == [0, 1]
    with pytest.raises(ValueError, match="quick names unknown runs \\['nope'\\]"):
        S.Study.load(_write(tmp_path, quick.replace("tte_flash_nested]", "nope]"), base="b", out="o"), quick=True)
    with pytest.raises(ValueError, match="no `quick` section"):
        S.Study.load(_write(tmp_path, CONFIG, base="b", out="o"), quick=True)


def test_runs_selects_a_subset_of_the_grid(tmp_path):
    study = S.Study.load(_write(tmp_path, CONFIG, base="b", out="o")).only(["tte_flash_k2", "tte_flash_nested"])
    assert [r.name for r in study.runs] == ["tte_flash_k2", "tte_flash_nested"] and study.main == ["tte_flash_k2"]
    with pytest.raises(ValueError, match="--runs names unknown runs \\['nope'\\]"):
        study.only(["nope"])


def _entry(name, seed, hit1, k_mode=None):
    return {"name": name, "seed": seed, "k_mode": k_mode, "k": 8, "overall": {"hit@1": hit1}, "n_queries": 400}


def test_conclusions_need_three_seeds_and_a_gap_beyond_the_spread():
    one = [_entry("no_think", 0, 0.20), _entry("tte_flash_k8", 0, 0.30)]
    _, c = S.summarise(one)
    assert "one seed: no spread measured; sampling error alone about +-2.0 on 400 queries" in c[0]
    assert c[1].endswith("is not met.")  # +10 points, but a single seed proves nothing
    three = [_entry("no_think", s, v) for s, v in enumerate([0.20, 0.21, 0.19])]
    three += [_entry("tte_flash_k8", s, v) for s, v in enumerate([0.26, 0.27, 0.25])]
    _, c = S.summarise(three)
    assert "+6.0 points; larger than the seed spread of 1.0" in c[0] and c[1].endswith("is met.")
    noisy = three[:3] + [_entry("tte_flash_k8", s, v) for s, v in enumerate([0.16, 0.27, 0.35])]
    _, c = S.summarise(noisy)
    assert "inside the seed spread" in c[0] and c[1].endswith("is not met.")
    # only the configurations named in advance compete: a lucky variant outside them cannot carry the claim
    lucky = noisy + [_entry("tte_flash_lucky", s, 0.40) for s in range(3)]
    assert S.summarise(lucky)[1][1].endswith("is met.")
    # exactly 5 points (162 more right of 3 x 1,080) meets it: these floats, as the GPU study stored them,
    # average to a difference of 4.999999999999999
    exact = [_entry("no_think", s, v) for s, v in enumerate([0.29259259259259257, 0.2138888888888889, 0.23981481481481481])]
    exact += [_entry("tte_flash_k2", s, v) for s, v in enumerate([0.31203703703703706, 0.25833333333333336, 0.32592592592592595])]
    _, c = S.summarise(exact)
    assert "+5.0 points; larger than the seed spread of 4.0" in c[0] and c[1].endswith("is met.")
    _, c = S.summarise(lucky, candidates=["tte_flash_k8"])
    assert c[0].startswith("Best TTE-Flash setting named in main (tte_flash_k8) tte_flash_k8:") and c[1].endswith("is not met.")


def test_conclusions_compare_the_nested_model_with_fixed_k():
    def at(name, mode, k, values):
        return [{**_entry(name, s, v, mode), "k": k} for s, v in enumerate(values)]

    entries = at("no_think", None, 0, [0.20, 0.20]) + at("tte_flash_k2", "parallel", 2, [0.25, 0.23])
    entries += at("tte_flash_k8", "parallel", 8, [0.22, 0.22])
    entries += at("tte_flash_nested_k2", "nested", 2, [0.235, 0.235])
    entries += at("tte_flash_nested_k8", "nested", 8, [0.20, 0.22])
    entries += at("tte_flash_nested_k1", "nested", 1, [0.30, 0.30])  # no fixed K=1 run: not compared
    _, c = S.summarise(entries)
    assert c[-1] == ("Nested checkpoint minus fixed-K parallel models, overall hit@1: K=2 -0.5 (2 vs 2 seeds); "
                     "K=8 -1.0 (2 vs 2 seeds). Within 1 point of fixed K, or above it, at every K with 3 seeds of "
                     "both: not judged (no K with 3 seeds of both).")
    entries += [{**e, "seed": 2, "overall": dict(e["overall"])} for e in entries if e["seed"] == 1]  # = seed 1
    entries[-2]["overall"]["hit@1"] = 0.20  # nested K=8 seeds 0.20, 0.22, 0.20 against 0.22: -1.3
    assert S.summarise(entries)[1][-1].endswith("K=8 -1.3 (3 vs 3 seeds). Within 1 point of fixed K, or above "
                                                "it, at every K with 3 seeds of both: no.")
    entries[-2]["overall"]["hit@1"] = 0.22  # -0.7
    assert S.summarise(entries)[1][-1].endswith("at every K with 3 seeds of both: yes.")
