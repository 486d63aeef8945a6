"""Readers for the official MMEB-v2 formats, on the fixtures (tests/mmeb_fixtures.py)."""
from __future__ import annotations

import dataclasses
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
    assert qa.qrels[0] == {"optB": 1.0} and qa.query_ids == ["qvidA:7"]  # NExTQA's qid repeats across videos
    ret = read(mmeb_fixture, "MSR-VTT")
    assert ret.pools is None and list(ret.candidates) == ["retA", "retB"]  # retA twice in the data: once here
    assert [q["text"] for q in ret.queries][1] == "Find a video that contains the following visual content: a dog runs"
    assert ret.candidates["retA"].text == " Understand the content of the provided video."
    mret = read(mmeb_fixture, "Charades-STA")
    assert mret.pools[0] == ["movA/negative_0", "movA/negative_1", "movA/positive_0"]
    assert mret.qrels[0] == {"movA/positive_0": 1.0}


def test_video_qa_parsers_follow_the_reference(mmeb_fixture):
    ego = read(mmeb_fixture, "EgoSchema")  # options "A. x": names as given, texts cut as the reference cuts them
    assert ego.queries[0]["text"].endswith("Question:  what is c doing?A. cooking B. reading C. cleaning. D. running E. sleeping")
    assert ego.pools[0][2] == "C. cleaning." and ego.candidates["C. cleaning."].text == "cleaning"
    assert ego.qrels == [{"C. cleaning.": 1.0}] and len(ego.queries[0]["video"]) == 8
    act = read(mmeb_fixture, "ActivityNetQA")
    assert act.queries[0]["text"].endswith("Question:  is the man swimming? (A) yes; (B) no.")
    assert act.pools == [["yes", "no"]] and act.qrels == [{"no": 1.0}] and act.query_ids == ["act_1"]
    assert "/ActivityNetQA/v_actA/" in act.queries[0]["video"][0]
    mv = TASKS["MVBench"]
    assert len(mv.args["subsets"]) == 20
    mv = dataclasses.replace(mv, args={**mv.args, "subsets": ["action_antonym", "object_shuffle"]})
    ann, data, cache = mmeb_fixture
    d = read_task(mv, data, annotations=ann, cache_dir=cache)
    assert d.pools == [["(A) up", "(B) down"], ["(A) left", "(B) right", "(C) middle"]]
    assert d.qrels == [{"(B) down": 1.0}, {"(A) left": 1.0}] and d.candidates["(B) down"].text == "(B) down"
    assert d.queries[1]["text"].endswith("Question:  where is it?\nOptions:\n(A) left\n(B) right\n(C) middle")
    assert "/MVBench/object_shuffle/mvB.mp4/" in d.queries[1]["video"][0]


def test_youcook2_and_momentseeker(mmeb_fixture):
    yc = read(mmeb_fixture, "YouCook2")  # segments of one video are separate candidates, named by `id`
    assert list(yc.candidates) == ["segA", "segB"] and yc.qrels == [{"segA": 1.0}, {"segB": 1.0}]
    ms = read(mmeb_fixture, "MomentSeeker")
    assert ms.pools[0] == ["video_frames/clips_p1", "video_frames/clips_n1", "video_frames/clips_n2"]
    assert ms.qrels == [{"video_frames/clips_p1": 1.0}, {"video_frames/clips_n1": 1.0}, {"video_frames/clips_n2": 1.0}]
    assert len(ms.candidates) == 3  # clips shared between queries are encoded once
    q_video, q_image, q_text = ms.queries
    assert q_video["text"] == " Find the clip that corresponds to the given sentence and video segment: a man jumps"
    assert "/video_frames/src_q1/" in q_video["video"][0]
    assert q_image["text"] == " Select the video clip that aligns with the given text and image: the same dog"
    assert q_image["image"].endswith("MomentSeeker/query_img1.jpg")
    assert q_text == {"text": "Find the clip that corresponds to the given text: someone sings", "image": None, "video": None}
    assert ms.candidates["video_frames/clips_n1"].text == " Understand the content of the provided video clip."


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
