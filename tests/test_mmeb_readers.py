"""Readers for the official MMEB-v2 formats, on the fixtures (tests/mmeb_fixtures.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tteflash.eval.mmeb.readers import MMEBDataError, read_task, sample_frames
from tteflash.eval.mmeb.registry import TASKS


def read(fx, name, **kw):
    ann, data, cache = fx
    return read_task(TASKS[name], data, annotations=ann, cache_dir=cache, **kw)


def test_image_prompts_follow_the_reference(mmeb_fixture):
    d = read(mmeb_fixture, "ImageNet-1K")
    # "<|image_pad|> " + instruction, " \n" -> "\n", plus "\n"; the image token is the model's own
    assert d.queries[0]["text"] == "\nRepresent the given image for classification\n\n"
    assert d.queries[0]["image"].endswith("image-tasks/MMEB/cls/catA.jpg")
    assert d.pools == [["labelA", "labelB", "labelC"], ["labelB", "labelA", "labelC"]]
    assert d.qrels == [{"labelA": 1.0}, {"labelB": 1.0}]  # gold listed first
    assert list(d.candidates) == ["labelA", "labelB", "labelC"]  # shared across pools, encoded once
    qa = read(mmeb_fixture, "OK-VQA")
    assert qa.queries[0]["text"] == "\nRepresent the given image with the following question: what is A?\n"
    t2i = read(mmeb_fixture, "MSCOCO_t2i")
    assert t2i.queries[0] == {"text": "Find me an everyday image that matches the given caption: capA\n",
                              "image": None, "video": None}
    cand = t2i.candidates["t2i/picB.jpg"].to_input()
    assert cand["text"] == "\nRepresent the given image.\n" and cand["image"].endswith("t2i/picB.jpg")
    vg = read(mmeb_fixture, "RefCOCO-Matching")
    assert list(vg.candidates) == ["vg/sceneA.jpg:objA", "vg/sceneA.jpg:objB"]  # same image, two targets
    assert vg.candidates["vg/sceneA.jpg:objB"].text == (
        '\nSelect the portion of the image that follows the language expressions: "objB"\n')


def test_video_readers(mmeb_fixture):
    cls = read(mmeb_fixture, "HMDB51")
    assert cls.pools is None and list(cls.candidates) == ["clap", "wave"]  # global label pool
    assert cls.queries[0]["text"] == " What actions or objects interactions are the person in the video doing?"
    names = [os.path.basename(f) for f in cls.queries[0]["video"]]
    # 8 of 12 frames, uniformly (truncated linspace) over the naturally sorted files
    assert names == [f"frame_{i}.jpg" for i in (1, 2, 4, 5, 7, 8, 10, 12)]
    assert len(cls.queries[2]["video"]) == 3  # fewer frames than 8: all of them
    assert any("labels seen in the annotations" in n for n in cls.notes)
    qa = read(mmeb_fixture, "NExTQA")
    assert qa.queries[0]["text"].startswith(" Given a video and a question, select")
    assert qa.queries[0]["text"].endswith("Question:  what happens first?\nOptions:\n(A) optA\n(B) optB\n(C) optC\n(D) optD\n(E) optE")
    assert qa.qrels[0] == {"optB": 1.0} and qa.query_ids == ["7"]
    ret = read(mmeb_fixture, "MSR-VTT")
    assert ret.pools is None and list(ret.candidates) == ["retA", "retB"]  # retA twice in the data: once here
    assert [q["text"] for q in ret.queries][1] == "Find a video that contains the following visual content: a dog runs"
    assert ret.candidates["retA"].text == " Understand the content of the provided video."
    mret = read(mmeb_fixture, "Charades-STA")
    assert mret.pools[0] == ["movA/negative_0", "movA/negative_1", "movA/positive_0"]
    assert mret.qrels[0] == {"movA/positive_0": 1.0}


def test_visdoc_global_pool_dedup_and_graded_qrels(mmeb_fixture):
    d = read(mmeb_fixture, "ViDoRe_arxivqa")
    assert d.pools is None
    assert list(d.candidates) == ["docA", "docB", "docC"]  # docB twice in the corpus and in the qrels: once
    assert d.queries[0]["text"] == "Find a document image that matches the given query: find docA"
    a, b = d.candidates["docA"].to_input(), d.candidates["docB"].to_input()
    assert a["image"].endswith("visdoc-tasks/ViDoRe_arxivqa/docA.png")  # on disk
    assert b["image"].size == (56, 56)  # not on disk: the page image in the corpus
    assert a["text"] == " Understand the content of the provided document image."
    g = read(mmeb_fixture, "ViDoRe_esg_reports_human_labeled_v2")
    assert g.qrels == [{"pageA": 1.0, "pageB": 2.0}] and len(g.candidates) == 4
    rag = read(mmeb_fixture, "VisRAG_ArxivQA")
    img = rag.candidates["rag1.png"].to_input()["image"]
    assert isinstance(img, str) and os.path.basename(img).startswith("rag1_") and img.endswith(".png")


def test_limit(mmeb_fixture):
    assert len(read(mmeb_fixture, "MSR-VTT", limit=1).queries) == 1


def test_clear_errors(mmeb_fixture, tmp_path):
    ann, data, cache = mmeb_fixture
    with pytest.raises(MMEBDataError, match=r"ImageNet-1K: media file not found: .*cls/catA.jpg"):
        read_task(TASKS["ImageNet-1K"], tmp_path, annotations=ann, cache_dir=cache)
    with pytest.raises(MMEBDataError, match=r"HMDB51: video frame folder not found: .*vidA"):
        read_task(TASKS["HMDB51"], tmp_path, annotations=ann, cache_dir=cache)
    with pytest.raises(MMEBDataError, match=r"annotations not found: .*VLM2Vec/UCF101"):
        read_task(TASKS["UCF101"], data, annotations=ann, cache_dir=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MMEBDataError, match="no frame images"):
        sample_frames(Path(tmp_path / "empty"), 8, "T")


def test_every_registry_parser_has_a_reader():
    from tteflash.eval.mmeb.readers import READERS
    assert {t.parser for t in TASKS.values()} - {"beir"} <= set(READERS)


def test_missing_subset_is_a_clear_error(mmeb_fixture):
    ann, data, cache = mmeb_fixture
    with pytest.raises(MMEBDataError, match=r"DocVQA: cannot load annotations .*subset='DocVQA'"):
        read_task(TASKS["DocVQA"], data, annotations=ann, cache_dir=cache)
