"""The MMEB-v2 task registry: 78 tasks in the right groups, with the right metric and pool type."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from tteflash.cli import main
from tteflash.eval.mmeb.registry import GROUPS, TASKS, select


def test_counts_per_modality_and_group():
    assert len(TASKS) == 78
    assert Counter(t.modality for t in TASKS.values()) == {"image": 36, "video": 18, "visdoc": 24}
    assert Counter(t.group for t in TASKS.values()) == {
        "image-CLS": 10, "image-QA": 10, "image-RET": 12, "image-VG": 4,
        "video-CLS": 5, "video-QA": 5, "video-RET": 5, "video-MRET": 3,
        "ViDoRe-v1": 10, "ViDoRe-v2": 4, "VisRAG": 6, "visdoc-OOD": 4}
    assert set(GROUPS) == {t.group for t in TASKS.values()}


def test_metric_pool_and_frames():
    for t in TASKS.values():
        assert t.metric == ("ndcg_linear@5" if t.modality == "visdoc" else "hit@1")
        assert t.num_frames == (8 if t.modality == "video" else None)
        if t.modality == "image" or t.group in ("video-QA", "video-MRET") or t.name == "SmthSmthV2":
            assert t.pool == "local", t.name
        else:  # video CLS (but SSv2), video RET, every visual-document task
            assert t.pool == "global", t.name
    assert TASKS["ViDoRe_arxivqa"].repo == "vidore/arxivqa_test_subsampled_beir"
    assert TASKS["MSR-VTT"].subset == "test_1k" and TASKS["VisRAG_PlotQA"].split == "train"


def test_select():
    assert len(select("image")) == 36 and len(select("video,visdoc")) == 42 and len(select("all")) == 78
    assert [t.name for t in select("image-VG")] == ["MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"]
    assert [t.name for t in select("MSR-VTT,MSR-VTT,video-RET")][:2] == ["MSR-VTT", "DiDeMo"]
    with pytest.raises(KeyError, match="unknown MMEB task.*'ImageNet'"):
        select("ImageNet")


def test_cli_list(capsys):
    assert main(["eval", "mmeb", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 78
    rows = [json.loads(line) for line in lines]
    assert all({"name", "modality", "group", "metric", "pool"} <= set(r) for r in rows)
    assert rows[0]["name"] == "ImageNet-1K" and rows[-1]["name"] == "MMLongBench-doc"


def test_cli_unknown_task(capsys, tmp_path):
    assert main(["eval", "mmeb", "--tasks", "NoSuchTask", "--data-root", str(tmp_path), "--model", "x"]) == 2
    assert "unknown MMEB task" in capsys.readouterr().err


def test_reference_query_caps():
    assert TASKS["SmthSmthV2"].max_queries == 1000  # the reference's eval config subsamples SSv2
    assert sum(t.max_queries is not None for t in TASKS.values()) == 1
