"""Small MMEB-v2 fixtures in the official formats: one task per group (12 tasks).

Annotations are Hugging Face dataset repos (parquet per config/split, configs declared in README.md)
under `<root>/annotations/<owner>/<repo>`; media are laid out under `<root>/data` as the release does.
File names carry tags ("catA", "vidB", ...) so a fake encoder can give hand-chosen embeddings.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

TASKS = ["ImageNet-1K", "OK-VQA", "MSCOCO_t2i", "RefCOCO-Matching", "HMDB51", "NExTQA", "MSR-VTT",
         "Charades-STA", "ViDoRe_arxivqa", "ViDoRe_esg_reports_human_labeled_v2", "VisRAG_ArxivQA", "ViDoSeek-page"]


def image(seed: int, size: int = 56) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def write_repo(root: Path, repo: str, configs: dict[str, dict[str, list[dict]]], features=None) -> Path:
    """A dataset repo: <config>/<split>-00000-of-00001.parquet plus README.md declaring the configs."""
    from datasets import Dataset
    d = root / repo
    yaml = ["---", "configs:"]
    for name, splits in configs.items():
        yaml += [f"- config_name: {name}", "  data_files:"]
        for split, rows in splits.items():
            f = d / name / f"{split}-00000-of-00001.parquet"
            f.parent.mkdir(parents=True, exist_ok=True)
            feats = (features or {}).get(name)
            ds = Dataset.from_list(rows, features=feats) if feats else Dataset.from_list(rows)
            ds.to_parquet(str(f))
            yaml += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
    (d / "README.md").write_text("\n".join(yaml + ["---", f"# {repo} (test fixture)", ""]))
    return d


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _frames(folder: Path, n: int, seed: int, name: str = "frame_{:d}.jpg") -> None:
    for i in range(n):
        _save(image(seed * 100 + i), folder / name.format(i + 1))


def build(root: Path) -> tuple[Path, Path]:
    """Write the fixtures; returns (annotations dir, data root)."""
    from datasets import Features, Image as DImage, Value
    ann, data = root / "annotations", root / "data"
    img_root = data / "image-tasks" / "MMEB"
    for i, name in enumerate(["cls/catA.jpg", "cls/catB.jpg", "qa/imgA.jpg", "qa/imgB.jpg", "t2i/picA.jpg",
                              "t2i/picB.jpg", "t2i/picC.jpg", "vg/sceneA.jpg", "vg/sceneB.jpg"]):
        _save(image(i), img_root / name)
    mmeb = {
        "ImageNet-1K": [  # gold candidate listed first, as in the release
            dict(qry_inst="<|image_1|>\nRepresent the given image for classification\n", qry_text="",
                 qry_img_path="cls/catA.jpg", tgt_inst="", tgt_text=["labelA", "labelB", "labelC"], tgt_img_path=["", "", ""]),
            dict(qry_inst="<|image_1|>\nRepresent the given image for classification\n", qry_text="",
                 qry_img_path="cls/catB.jpg", tgt_inst="", tgt_text=["labelB", "labelA", "labelC"], tgt_img_path=["", "", ""]),
        ],
        "OK-VQA": [
            dict(qry_inst="<|image_1|>\nRepresent the given image with the following question:", qry_text="what is A?",
                 qry_img_path="qa/imgA.jpg", tgt_inst="", tgt_text=["ansA", "ansB"], tgt_img_path=["", ""]),
            dict(qry_inst="<|image_1|>\nRepresent the given image with the following question:", qry_text="what is B?",
                 qry_img_path="qa/imgB.jpg", tgt_inst="", tgt_text=["ansB", "ansA"], tgt_img_path=["", ""]),
        ],
        "MSCOCO_t2i": [
            dict(qry_inst="Find me an everyday image that matches the given caption:", qry_text="capA", qry_img_path="",
                 tgt_inst="<|image_1|>\nRepresent the given image.", tgt_text=["", "", ""],
                 tgt_img_path=["t2i/picA.jpg", "t2i/picB.jpg", "t2i/picC.jpg"]),
            dict(qry_inst="Find me an everyday image that matches the given caption:", qry_text="capB", qry_img_path="",
                 tgt_inst="<|image_1|>\nRepresent the given image.", tgt_text=["", "", ""],
                 tgt_img_path=["t2i/picB.jpg", "t2i/picA.jpg", "t2i/picC.jpg"]),
        ],
        "RefCOCO-Matching": [  # same image, different captions: names are path:caption
            dict(qry_inst="<|image_1|>\nSelect the portion of the image that follows the language expressions.",
                 qry_text="the left one", qry_img_path="vg/sceneA.jpg",
                 tgt_inst="<|image_1|>\nSelect the portion of the image that follows the language expressions:",
                 tgt_text=['"objA"', '"objB"'], tgt_img_path=["vg/sceneA.jpg", "vg/sceneA.jpg"]),
        ],
    }
    write_repo(ann, "ziyjiang/MMEB_Test_Instruct", {k: {"test": v} for k, v in mmeb.items()})

    frames = data / "video-tasks" / "frames"
    for vid, seed in (("vidA", 1), ("vidB", 2)):
        _frames(frames / "video_cls" / "HMDB51" / vid, 12, seed)
    write_repo(ann, "VLM2Vec/HMDB51", {"default": {"test": [
        dict(video_id="vidA", pos_text="clap"), dict(video_id="vidB", pos_text="wave"),
        dict(video_id="vidC", pos_text="clap")]}})
    _frames(frames / "video_cls" / "HMDB51" / "vidC", 3, 3)
    _frames(frames / "video_qa" / "NExTQA" / "qvidA", 10, 4, "{:04d}.jpeg")
    write_repo(ann, "VLM2Vec/NExTQA", {"MC": {"test": [
        dict(video="qvidA", question="what happens first?", answer=1, qid=7, type="TN",
             a0="optA", a1="optB", a2="optC", a3="optD", a4="optE")]}})
    for vid, seed in (("retA", 5), ("retB", 6)):
        _frames(frames / "video_ret" / "MSR-VTT" / vid, 8, seed)
    write_repo(ann, "VLM2Vec/MSR-VTT", {"test_1k": {"test": [
        dict(video_id="retA", video="retA.mp4", caption="a cat plays"),
        dict(video_id="retB", video="retB.mp4", caption="a dog runs"),
        dict(video_id="retA", video="retA.mp4", caption="a cat again")]}})
    mret = frames / "video_mret" / "Charades_STA" / "movA"
    _frames(mret / "query", 8, 7)
    for clip, seed in (("positive_0", 8), ("negative_0", 9), ("negative_1", 10)):
        _frames(mret / clip, 8, seed)
    write_repo(ann, "VLM2Vec/Charades-STA", {"default": {"test": [dict(query="person opens door", video_path="/x/movA.mp4")]}})

    # more video parsers, read by the reader tests only (not in TASKS)
    _frames(frames / "video_qa" / "EgoSchema" / "egoA", 8, 11)
    write_repo(ann, "VLM2Vec/EgoSchema", {"Subset": {"test": [
        dict(video_idx="egoA", question="what is c doing?", answer="2", question_idx="egoA",
             option=["A. cooking", "B. reading", "C. cleaning.", "D. running", "E. sleeping"])]}})
    _frames(frames / "video_qa" / "ActivityNetQA" / "v_actA", 8, 12)
    write_repo(ann, "VLM2Vec/ActivityNetQA", {"default": {"test": [
        dict(video_name="actA", question="is the man swimming", answer="no", question_id="act_1")]}})
    for sub, vid in (("action_antonym", "mvA.webm"), ("object_shuffle", "mvB.mp4")):
        _frames(frames / "video_qa" / "MVBench" / sub / vid, 8, 13)
    write_repo(ann, "VLM2Vec/MVBench", {
        "action_antonym": {"train": [dict(video="mvA.webm", question="what happens?", candidates=["up", "down"],
                                          answer="down")]},
        "object_shuffle": {"train": [dict(video="mvB.mp4", question="where is it?", candidates=["left", "right", "middle"],
                                          answer="left")]}})
    for vid, seed in (("segA", 14), ("segB", 15)):
        _frames(frames / "video_ret" / "YouCook2" / vid, 8, seed)
    write_repo(ann, "lmms-lab/YouCook2", {"default": {"val": [  # two segments of one YouTube video
        dict(id="segA", video_id="yt1", video_path="val/x/yt1.mp4", sentence="cut the onion"),
        dict(id="segB", video_id="yt1", video_path="val/x/yt1.mp4", sentence="fry the onion")]}})
    seek = frames / "video_mret" / "MomentSeeker" / "video_frames"
    for name, seed in (("src_q1", 16), ("clips_p1", 17), ("clips_n1", 18), ("clips_n2", 19)):
        _frames(seek / name, 8, seed)
    _save(image(20), frames / "video_mret" / "MomentSeeker" / "query_img1.jpg")
    clip = lambda p: {"output_path": p}  # noqa: E731
    write_repo(ann, "VLM2Vec/MomentSeeker", {"default": {"test": [
        dict(query="a man jumps", input_frames="src/q1.mp4", positive_frames=[clip("clips/p1.mp4")],
             negative_frames=[clip("clips/n1.mp4"), clip("clips/n2.mp4")]),
        dict(query="the same dog", input_frames="img1.jpg", positive_frames=[clip("clips/n1.mp4")],
             negative_frames=[clip("clips/p1.mp4")]),
        dict(query="someone sings", input_frames="", positive_frames=[clip("clips/n2.mp4")],
             negative_frames=[clip("clips/n1.mp4")])]}})

    def beir(repo, media, queries, corpus, qrels, split="test", on_disk=(), hashed=False):
        from tteflash.eval.mmeb.readers import _page_file
        feats = {"corpus": Features({"corpus-id": Value("string"), "image": DImage()})}
        rows = []
        for i, cid in enumerate(corpus):
            buf = io.BytesIO()
            image(50 + i).save(buf, "PNG")
            rows.append({"corpus-id": cid, "image": {"bytes": buf.getvalue(), "path": None}})
        for cid in on_disk:
            _save(image(90), data / "visdoc-tasks" / media / _page_file(cid, hashed))
        write_repo(ann, repo, {"queries": {split: queries}, "corpus": {split: rows},
                               "qrels": {split: [dict(zip(("query-id", "corpus-id", "score"), q)) for q in qrels]}},
                   features=feats)

    beir("vidore/arxivqa_test_subsampled_beir", "ViDoRe_arxivqa",
         [{"query-id": "q1", "query": "find docA"}, {"query-id": "q2", "query": "find docB"}],
         ["docA", "docB", "docC", "docB"],  # docB listed twice in the corpus: one candidate
         [("q1", "docA", 1), ("q2", "docB", 1)], on_disk=["docA"])
    beir("vidore/esg_reports_human_labeled_v2", "esg_reports_human_labeled_v2",
         [{"query-id": "g1", "query": "graded docs"}], ["pageA", "pageB", "pageC", "pageD"],
         [("g1", "pageA", 1), ("g1", "pageB", 2)])
    beir("openbmb/VisRAG-Ret-Test-ArxivQA", "VisRAG_ArxivQA", [{"query-id": "v1", "query": "find rag1"}],
         ["rag1.png", "rag2.png"], [("v1", "rag1.png", 1)], split="train", on_disk=["rag1.png", "rag2.png"], hashed=True)
    beir("VLM2Vec/ViDoSeek-page-fixed", "ViDoSeek-page", [{"query-id": "s1", "query": "find seekA"}],
         ["seekA", "seekB"], [("s1", "seekA", 1)])
    return ann, data
