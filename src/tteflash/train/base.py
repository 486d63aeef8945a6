"""`make base`: the small base checkpoint every demo method starts from.

Training from random weights in minutes learns nothing on the benchmark (contrastive collapse, slow
perception), so the base is pretrained once, without the benchmark's retrieval targets, to
(1) perceive its images: captioning of scenes, digit pairs, digit videos, object crops and pages,
    with a curriculum on the number of objects per scene;
(2) speak its language: next-token prediction on training-split query texts and CoT sentences
    (text only: no images, no candidates);
(3) embed: a symmetric image <-> text contrastive alignment of the embedding token with the full caption.
    (`--partial-captions`, the earlier recipe, aligns half of the images to some of their facts instead; a
    probe blamed it for unread page values, benchmarks/base_page_probe.py, but without it pages are still
    not read.)
Those are stage 1 (2,000 steps: 54 minutes on 2 cores before length groups, 36 with them). Stage 2
makes the base a reasoner, as a real VLM backbone is: it writes the gold CoT after training-split queries
(no candidates, no targets). Without it no method learned to reason within the demo's budget: the
explicit-CoT model wrote a right answer fact for 6% of test queries, TTE-Flash's decoded thoughts 3%
(benchmarks/thought_accuracy.py).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time

import torch

from ..backbone import build_tiny_backbone, train_tiny_tokenizer
from ..config import TTEFlashConfig
from ..data import bench
from ..eval.thoughts import thought_accuracy
from ..files import atomic_dir
from ..losses import info_nce
from ..model import TTEFlashModel
from ..processing import Row
from .steps import forward_by_length
from .trainer import TrainConfig, train

KIND_WEIGHTS = {"scene": 0.25, "page": 0.25, "digits": 0.2, "video": 0.2, "crop": 0.10}
DESCRIBE = "describe"


def base_examples(step: int, cfg: TrainConfig, curriculum_steps: int, partial_captions: bool = False,
                  reasoning: int = 0, latent: int = 0) -> list:
    """Perception pairs for one step: the number of objects per scene grows 1 -> 9 over the curriculum.
    Each pair is (input, caption, alignment text): the caption, or with partial_captions half of the time
    a partial one. `reasoning`: that many (training query, gold CoT) pairs, the reasoner's SFT; `latent`:
    that many (training query, gold CoT, think budget k) triples, the latent reasoner's."""
    rng = random.Random(f"base/{cfg.seed}/{step}")
    max_objects = min(9, 1 + int(8 * step / max(1, curriculum_steps)))
    kinds = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()), k=cfg.batch_size)
    pairs = [(inp, caption, partial_caption(caption, rng) if partial_captions else caption)
             for inp, caption in (bench.perception_example(k, rng, max_objects=max_objects) for k in kinds)]
    # language: query text + CoT sentences of training examples (no images, no candidates)
    texts = []
    for i in range(cfg.batch_size // 4):
        ex = bench.make_example(rng.choice(bench.TASK_NAMES), "train", rng.randrange(10**8))
        texts.append((ex.query.get("text") or "") + " . " + ex.cot)
    reasoned = []
    for _ in range(reasoning):
        ex = bench.make_example(rng.choice(bench.TASK_NAMES), "train", rng.randrange(10**8))
        reasoned.append((ex.query, ex.cot))
    latent_rows = []
    for _ in range(latent):
        ex = bench.make_example(rng.choice(bench.TASK_NAMES), "train", rng.randrange(10**8))
        latent_rows.append((ex.query, ex.cot, rng.choice(LATENT_BUDGETS)))
    return [pairs, texts, reasoned, latent_rows]


def partial_caption(caption: str, rng: random.Random) -> str:
    """The full caption or, half of the time, at least two of its " , "-separated facts, in order."""
    facts = caption.split(" , ")
    if len(facts) <= 2 or rng.random() < 0.5:
        return caption
    keep = sorted(rng.sample(range(len(facts)), rng.randint(2, len(facts) - 1)))
    return " , ".join(facts[i] for i in keep)


def perception_step(model, data, cfg: TrainConfig, step: int = 0) -> dict:
    pairs, texts, reasoned, latent = data
    p = model.processor
    caption_rows, image_rows, text_rows, keys = [], [], [], []
    describe = p.text_ids(DESCRIBE, "base prompt")
    for inp, caption, align_text in pairs:
        r = p.prompt_row(inp, "base image")  # patchified once, used by both rows
        caption_rows.append(Row(r.prompt + describe, r.prompt_types + [0] * len(describe), r.pixels,
                                inline_cot=p.cot_ids(caption), embed=False))
        if align_text not in keys:  # identical texts (e.g. two crops of a blue circle) are one target
            keys.append(align_text)
            image_rows.append(r)
            text_rows.append(p.prompt_row(align_text, "base caption"))
    lm_rows = []
    for t in texts:
        ids = p.text_ids(t, "base text")
        lm_rows.append(Row([], [], inline_cot=ids + [p.cot_end], embed=False))
    for query, cot in reasoned:  # the explicit-CoT layout: [query]<|cot|> CoT <|/cot|>
        r = p.prompt_row(query, "base query")
        lm_rows.append(Row(r.prompt, r.prompt_types, r.pixels, inline_cot=p.cot_ids(cot), embed=False))
    for query, cot, k in latent:  # TTE-Flash's CoT branch: [query][T_1..T_k], the CoT decoded from T_1..T_k alone
        r = p.prompt_row(query, "base query")
        lm_rows.append(Row(r.prompt, r.prompt_types, r.pixels, think=k, branch_cot=p.cot_ids(cot), embed=False))
    out = forward_by_length(model, caption_rows + lm_rows + image_rows + text_rows)  # rows of every length
    n0 = len(caption_rows) + len(lm_rows)
    n = len(image_rows)
    img, txt = out.embeddings[n0:n0 + n], out.embeddings[n0 + n:]
    con = info_nce(img, txt, torch.arange(n, device=img.device), cfg.temperature, symmetric=True)
    return {"loss": out.cot_loss + cfg.cot_weight * con, "generative": out.cot_loss, "contrastive": con}


def perception_report(model, n: int = 40, seed: int = 12345) -> dict:
    """Greedy captions vs the truth on fresh images, per kind: exact match and token accuracy."""
    rng = random.Random(f"perception-check/{seed}")
    report = {}
    for kind in bench.PERCEPTION_KINDS:
        pairs = [bench.perception_example(kind, rng) for _ in range(n)]
        gen = model.generate_cot([{**inp, "text": DESCRIBE} for inp, _ in pairs])
        truth = [c for _, c in pairs]
        tok_acc = [sum(a == b for a, b in zip(g.split(), t.split())) / len(t.split()) for g, t in zip(gen, truth)]
        report[kind] = {"exact": sum(g == t for g, t in zip(gen, truth)) / n, "token_accuracy": sum(tok_acc) / n}
    return report


BASE_VOCAB_SIZE = 640  # BPE target; the bench corpus yields fewer merges (545 tokens with the specials)


REASONING_ROWS = 32  # (query, gold CoT) rows per reasoning step, beside 16 perception pairs
LATENT_BUDGETS = (1, 2, 4, 8, 16)  # think budgets of the latent reasoning rows, one drawn per row


def _perception_stage(out: str, steps: int, seed: int, device: str, lr: float, partial_captions: bool,
                      progress: bool, **backbone_kwargs) -> tuple[TTEFlashModel, dict]:
    """Stage 1 from random weights: tokenizer, backbone, perception + language + alignment."""
    t0 = time.time()
    tokenizer = train_tiny_tokenizer(bench.corpus_texts(), vocab_size=BASE_VOCAB_SIZE, max_think_tokens=32)
    backbone = build_tiny_backbone(tokenizer, seed=seed, **backbone_kwargs)
    model = TTEFlashModel(backbone, TTEFlashConfig(think_tokens=0, max_text_tokens=64, max_cot_tokens=48)).to(device)
    cfg = TrainConfig(steps=steps, batch_size=32, lr=lr, warmup_steps=min(200, steps // 10), temperature=0.07,
                      cot_weight=1.0, freeze_vision=False, checkpoint_every=200, log_every=25, seed=seed)
    curriculum = int(0.5 * steps)
    state = train(model, cfg, out + ".work", lambda s: base_examples(s, cfg, curriculum, partial_captions),
                  step_fn=perception_step, progress=progress, desc="base: perception")
    return model, {"steps": steps, "partial_captions": partial_captions, "train_seconds": state["train_seconds"],
                   "wall_seconds": time.time() - t0, "history_last": state["history"][-1]}


def _reasoning_stage(model: TTEFlashModel, out: str, steps: int, seed: int, progress: bool,
                     latent_rows: int = 0) -> dict:
    """Stage 2, the reasoner's SFT (as TTE fine-tunes its reasoner before any embedding training): write the
    gold CoT after training-split queries ([query]<|cot|> CoT, the explicit-CoT layout; no candidates),
    while perception and alignment go on at half the batch so they are not forgotten."""
    t0 = time.time()
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup_steps=20, temperature=0.07, cot_weight=1.0,
                      freeze_vision=False, checkpoint_every=100, log_every=25, seed=seed + 1)
    state = train(model, cfg, out + ".work-reasoning",
                  lambda s: base_examples(s, cfg, 0, reasoning=REASONING_ROWS, latent=latent_rows),
                  step_fn=perception_step,
                  progress=progress, desc="base: reasoning")
    return {"steps": steps, "rows_per_step": REASONING_ROWS, "latent_rows_per_step": latent_rows,
            "train_seconds": state["train_seconds"],
            "wall_seconds": time.time() - t0, "history_last": state["history"][-1]}


def build_base(out: str, steps: int = 2000, reasoning_steps: int = 400, seed: int = 0, progress: bool = True,
               device: str = "cpu", lr: float = 1.5e-3, partial_captions: bool = False,
               perception: str | None = None, latent_rows: int = 0, **backbone_kwargs) -> dict:
    """Train and save the base; `backbone_kwargs` go to build_tiny_backbone (default: 256 hidden, 4 layers).

    perception: a saved stage-1 checkpoint (a base built without the reasoning stage) to start stage 2 from,
    instead of training stage 1 again. latent_rows: stage-2 rows per step that also train TTE-Flash's CoT
    branch (the gold CoT decoded from k think tokens alone). Killed runs resume within the stage they were in."""
    t0 = time.time()
    if perception:
        model = TTEFlashModel.from_pretrained(perception, device=device)
        with open(os.path.join(perception, "base_info.json")) as f:
            stage1 = json.load(f)
        if stage1.get("reasoning_stage"):  # its weights hold a reasoning stage already: the record would lie
            raise ValueError(f"--perception {perception}: that base already has a reasoning stage; pass a stage-1 "
                             "checkpoint (one built with --reasoning-steps 0)")
        stage1 = stage1.get("perception_stage", stage1)  # this code's stage-1 record, or an older base's info
        stage1 = {k: stage1[k] for k in ("steps", "partial_captions", "train_seconds", "wall_seconds", "history_last")}
        stage1["from"] = perception
    else:
        model, stage1 = _perception_stage(out, steps, seed, device, lr, partial_captions, progress, **backbone_kwargs)
    stage2 = _reasoning_stage(model, out, reasoning_steps, seed, progress, latent_rows) if reasoning_steps else None
    stages = [stage1] + ([stage2] if stage2 else [])
    info = {"perception_stage": stage1, "reasoning_stage": stage2,
            "train_seconds": sum(s["train_seconds"] for s in stages),
            "wall_seconds": sum(s["wall_seconds"] for s in stages),  # both stages, as one `make base` run
            "wall_seconds_this_run": time.time() - t0,
            "params": sum(p.numel() for p in model.parameters()),
            "perception": perception_report(model), "reasoning": thought_accuracy(model),
            "benchmark": f"{bench.BENCH_NAME} {bench.BENCH_VERSION}", "torch": torch.__version__}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        with open(os.path.join(tmp, "base_info.json"), "w") as f:
            json.dump(info, f, indent=2)
    for work in (".work", ".work-reasoning"):
        shutil.rmtree(out + work, ignore_errors=True)
    return info


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """`tte-flash base` and `python -m tteflash.train.base` take the same flags."""
    ap.add_argument("--out", default="checkpoints/base")
    ap.add_argument("--steps", type=int, default=2000, help="stage-1 optimizer steps (2,000: 36 minutes on 2 cores)")
    ap.add_argument("--reasoning-steps", type=int, default=400, help="stage-2 (reasoner SFT) steps; 0 skips it")
    ap.add_argument("--latent-rows", type=int, default=0,
                    help="stage-2 rows per step that decode the gold CoT from think tokens alone (TTE-Flash's CoT branch)")
    ap.add_argument("--perception", default=None, help="start from this stage-1 checkpoint instead of training stage 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--partial-captions", action="store_true",
                    help="align half of the images to partial captions (the recipe of the bases before 2026-11-26)")


def from_arguments(a: argparse.Namespace) -> dict:
    return build_base(a.out, a.steps, a.reasoning_steps, a.seed, device=a.device,
                      partial_captions=a.partial_captions, perception=a.perception,
                      latent_rows=a.latent_rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Pretrain the small base checkpoint the demo starts from.")
    add_arguments(ap)
    print(json.dumps(from_arguments(ap.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
