"""The 78 MMEB-v2 tasks as one table: group, modality, metric, pool, annotation source, media, prompts.

Behaviour is driven by this table, never by per-task branches: `parser` names a reader in
`readers.PARSERS`, `args` are that reader's per-task settings (column names, instruction strings).
Where a fact could not be checked against the public reference harness, `confirmed` is False and
docs/mmeb.md says what is unverified.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

IMAGE_REPO = ("ziyjiang/MMEB_Test_Instruct", "test")  # one subset per task (subset = dataset name)
IMAGE_ROOT = "image-tasks/MMEB"
VIDOC_QRY = "Find a document image that matches the given query:"
VIDOC_TGT = "Understand the content of the provided document image."
VIDEO_TGT = "Understand the content of the provided video."
VIDEO_QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
                   "Return only the exact text of your chosen answer. Question: ")

GROUPS = {  # group -> modality; the leaderboard's order
    "image-CLS": "image", "image-QA": "image", "image-RET": "image", "image-VG": "image",
    "video-CLS": "video", "video-QA": "video", "video-RET": "video", "video-MRET": "video",
    "ViDoRe-v1": "visdoc", "ViDoRe-v2": "visdoc", "VisRAG": "visdoc", "visdoc-OOD": "visdoc",
}
METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    group: str
    parser: str
    repo: str
    subset: str | None
    split: str
    media: str                      # folder under --data-root holding this task's media
    pool: str = "local"             # "local": each query's own candidate list; "global": the de-duplicated corpus
    num_frames: int | None = None   # video: frames sampled uniformly from the naturally sorted frame files
    args: dict = dataclasses.field(default_factory=dict)
    confirmed: bool = True          # column names and prompts checked against the reference harness
    max_queries: int | None = None  # the reference evaluates only the first N queries (its eval config)

    @property
    def modality(self) -> str:
        return GROUPS[self.group]

    @property
    def metric(self) -> str:
        return METRIC[self.modality]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "group": self.group, "metric": self.metric,
                "pool": self.pool, "num_frames": self.num_frames, "repo": self.repo, "subset": self.subset,
                "split": self.split, "media": self.media, "parser": self.parser, "max_queries": self.max_queries,
                "confirmed": self.confirmed}


def _image(name, group, parser, **args):
    return Task(name, group, parser, IMAGE_REPO[0], name, IMAGE_REPO[1], IMAGE_ROOT, args=args)


_CLS = ["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A", "ImageNet-R",
        "ObjectNet", "Country211"]
_QA = ["OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz", "GQA", "TextVQA"]
_RET = {"VisDial": "image_t2i", "CIRR": "image_i2i_vg", "VisualNews_t2i": "image_t2i", "VisualNews_i2t": "image_i2t",
        "MSCOCO_t2i": "image_t2i", "MSCOCO_i2t": "image_i2t", "NIGHTS": "image_i2i_vg", "WebQA": "image_t2i",
        "FashionIQ": "image_i2i_vg", "Wiki-SS-NQ": "image_t2i", "OVEN": "image_i2i_vg", "EDIS": "image_t2i"}
_VG = ["MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"]


def _video(name, group, parser, repo, subset, split, media, pool, **args):
    return Task(name, group, parser, repo, subset, split, f"video-tasks/frames/{media}", pool, 8, args)


_VIDEO_CLS_INST = {
    "K700": ("Kinetics-700", "Recognize the category of the video content."),
    "SmthSmthV2": ("SmthSmthV2", "What actions or object interactions are being performed by the person in the video?"),
    "HMDB51": ("HMDB51", "What actions or objects interactions are the person in the video doing?"),
    "UCF101": ("UCF101", "What activities or sports are being performed by the person in the video?"),
    "Breakfast": ("Breakfast", "Recognize the breakfast type that the person is cooking in the video. "),
}
_MEDIA_CLS = {"K700": "K700", "SmthSmthV2": "SSv2", "HMDB51": "HMDB51", "UCF101": "UCF101", "Breakfast": "Breakfast"}


def _video_cls(name):
    hf, inst = _VIDEO_CLS_INST[name]
    media = f"video_cls/{_MEDIA_CLS[name]}"
    if name == "SmthSmthV2":  # multiple choice among its own candidates (local), unlike the other four
        t = _video(name, "video-CLS", "ssv2", f"VLM2Vec/{hf}", None, "test", media, "local", instruction=inst)
        return dataclasses.replace(t, max_queries=1000)
    return _video(name, "video-CLS", "video_cls", f"VLM2Vec/{hf}", None, "test", media, "global", instruction=inst)


def _vidore(name, repo, group, media, subset=None, parser="beir", **kw):
    return Task(name, group, parser, repo, subset, kw.pop("split", "test"), f"visdoc-tasks/{media}", "global",
                args=dict(query_instruction=VIDOC_QRY, target_instruction=VIDOC_TGT, **kw.pop("args", {})), **kw)


_V1 = {"arxivqa": "arxivqa_test_subsampled_beir", "docvqa": "docvqa_test_subsampled_beir",
       "infovqa": "infovqa_test_subsampled_beir", "tabfquad": "tabfquad_test_subsampled_beir",
       "tatdqa": "tatdqa_test_beir", "shiftproject": "shiftproject_test_beir",
       "syntheticDocQA_artificial_intelligence": "syntheticDocQA_artificial_intelligence_test_beir",
       "syntheticDocQA_energy": "syntheticDocQA_energy_test_beir",
       "syntheticDocQA_government_reports": "syntheticDocQA_government_reports_test_beir",
       "syntheticDocQA_healthcare_industry": "syntheticDocQA_healthcare_industry_test_beir"}
# ViDoRe-v2 in MMEB-v2: the human-labelled ESG set plus the multilingual versions of the other three
# (the reference also defines English-only variants that filter queries by `language`).
_V2 = {"ViDoRe_esg_reports_human_labeled_v2": ("esg_reports_human_labeled_v2", "esg_reports_human_labeled_v2"),
       "ViDoRe_biomedical_lectures_v2_multilingual": ("biomedical_lectures_v2", "biomedical_lectures_v2_multilingual"),
       "ViDoRe_economics_reports_v2_multilingual": ("economics_reports_v2", "economics_reports_v2_multilingual"),
       "ViDoRe_esg_reports_v2_multilingual": ("esg_reports_v2", "esg_reports_v2_multilingual")}
_VISRAG = ["ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA"]
_OOD = {"ViDoSeek-page": "VLM2Vec/ViDoSeek-page-fixed", "ViDoSeek-doc": "VLM2Vec/ViDoSeek",
        "MMLongBench-page": "VLM2Vec/MMLongBench-page-fixed", "MMLongBench-doc": "VLM2Vec/MMLongBench-doc"}

_RET_INST = {  # video retrieval: (repo, subset, split, id column = candidate name and frame folder, video column, caption column, instruction)
    "DiDeMo": ("VLM2Vec/DiDeMo", None, "test", None, "video", "caption", "Find a video that includes the following described scenes:"),
    "MSR-VTT": ("VLM2Vec/MSR-VTT", "test_1k", "test", "video_id", "video", "caption", "Find a video that contains the following visual content:"),
    "MSVD": ("VLM2Vec/MSVD", None, "test", "video_id", "video", "caption", "Find the video snippet that corresponds to the given summary:"),
    "VATEX": ("VLM2Vec/VATEX", None, "test", "videoID", None, "enCap", "Select a video that fits the description provided:"),
    "YouCook2": ("lmms-lab/YouCook2", None, "val", "id", "video_path", "sentence", "Find a video that demonstrates the following action while making a recipe:"),
}
_QA_TASKS = {  # video QA: (repo, subset, split, parser); each parser follows the reference's of that name
    "Video-MME": ("VLM2Vec/Video-MME", None, "test", "videomme"),
    "NExTQA": ("VLM2Vec/NExTQA", "MC", "test", "nextqa"),
    "EgoSchema": ("VLM2Vec/EgoSchema", "Subset", "test", "egoschema"),
    "MVBench": ("VLM2Vec/MVBench", None, "train", "mvbench"),
    "ActivityNetQA": ("VLM2Vec/ActivityNetQA", None, "test", "activitynetqa"),
}
# MVBench is read as these 20 subsets concatenated (frames under <frames>/video_qa/MVBench/<subset>/<video>/).
MVBENCH_SUBSETS = ["episodic_reasoning", "action_sequence", "action_prediction", "action_antonym",
                   "fine_grained_action", "unexpected_action", "object_existence", "object_interaction",
                   "object_shuffle", "moving_direction", "action_localization", "scene_transition", "action_count",
                   "moving_count", "moving_attribute", "state_change", "fine_grained_pose", "character_order",
                   "egocentric_navigation", "counterfactual_inference"]
_MRET = {"QVHighlight": ("VLM2Vec/QVHighlight", "QVHighlight", "moment_retrieval"),
         "Charades-STA": ("VLM2Vec/Charades-STA", "Charades_STA", "moment_retrieval"),
         "MomentSeeker": ("VLM2Vec/MomentSeeker", "MomentSeeker", "momentseeker")}


def _build() -> dict[str, Task]:
    tasks = [_image(n, "image-CLS", "image_cls") for n in _CLS]
    tasks += [_image(n, "image-QA", "image_qa") for n in _QA]
    tasks += [_image(n, "image-RET", p, visdial=n == "VisDial") for n, p in _RET.items()]
    tasks += [_image(n, "image-VG", "image_i2i_vg") for n in _VG]
    tasks += [_video_cls(n) for n in _VIDEO_CLS_INST]
    for n, (repo, sub, split, parser) in _QA_TASKS.items():
        extra = {"subsets": MVBENCH_SUBSETS} if n == "MVBench" else {}
        tasks.append(_video(n, "video-QA", parser, repo, sub, split, f"video_qa/{n}", "local", prompt=VIDEO_QA_PROMPT,
                            **extra))
    for n, (repo, sub, split, id_col, video_col, cap_col, inst) in _RET_INST.items():
        tasks.append(_video(n, "video-RET", "video_ret", repo, sub, split, f"video_ret/{n}", "global", id_column=id_col,
                            video_column=video_col, caption_column=cap_col, query_instruction=inst,
                            target_instruction=VIDEO_TGT))
    for n, (repo, media, parser) in _MRET.items():  # momentseeker: its own instructions (readers.py)
        tasks.append(_video(n, "video-MRET", parser, repo, None, "test", f"video_mret/{media}", "local",
                            query_instruction="Find the clip that corresponds to the described scene in the given video:",
                            target_instruction=VIDEO_TGT))
    tasks += [_vidore(f"ViDoRe_{k}", f"vidore/{v}", "ViDoRe-v1", f"ViDoRe_{k}") for k, v in _V1.items()]
    tasks += [_vidore(n, f"vidore/{repo}", "ViDoRe-v2", media) for n, (repo, media) in _V2.items()]
    tasks += [_vidore(f"VisRAG_{k}", f"openbmb/VisRAG-Ret-Test-{k}", "VisRAG", f"VisRAG_{k}", split="train",
                      args={"hashed_names": True}) for k in _VISRAG]
    tasks += [_vidore(n, repo, "visdoc-OOD", n) for n, repo in _OOD.items()]
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _build()


def select(spec: str) -> list[Task]:
    """`image,video,visdoc`, group names (`image-QA`) or task names, comma-separated; `all` for every task."""
    out: list[Task] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "all":
            found = list(TASKS.values())
        elif part in TASKS:
            found = [TASKS[part]]
        else:
            found = [t for t in TASKS.values() if part in (t.modality, t.group)]
        if not found:
            raise KeyError(f"unknown MMEB task, group or modality {part!r}; see `tte-flash eval mmeb --list`")
        out += [t for t in found if t not in out]
    return out


def list_lines() -> list[str]:
    return [json.dumps(t.summary()) for t in TASKS.values()]
