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
Those are stage 1 (2,000 steps: 54 minutes on 2 cores before length groups, 36 with them; 16 on the
2026-12-06 machine, where the first three stages took 27). Stage 2 goes on with perception at a lower
learning rate, mostly scenes and pages, which stage 1 leaves partly unread (page values: not at all).
Stage 3 makes the base a reasoner, as a real VLM backbone is: it writes the gold CoT after training-split
queries (no candidates, no targets). Without it no method learned to reason within the demo's budget: the
explicit-CoT model wrote a right answer fact for 6% of test queries, TTE-Flash's decoded thoughts 3%
(benchmarks/thought_accuracy.py). Stage 4 makes it an embedder of questions, as VLM2Vec-style backbones
are trained on VQA before retrieval: a perception question about an input (one attribute, digit or page
value, read off it: no hop, count or arithmetic, so no benchmark task) embeds as its answer. Before it the
embedding token had only summarised whole inputs. Stage 4 also has a linear head read each page's values off
its embedding: no contrastive objective puts them there (benchmarks/page_saddle.py).
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


class PageValueHead(torch.nn.Module):
    """Reads the value of each row of a page off the page's embedding (a linear head; a base-training aid,
    never saved with the base). Why: image <-> caption alignment never puts page values into the embedding
    (benchmarks/page_saddle.py)."""

    def __init__(self, hidden: int, seed: int = 0, rows: int = 3, values: int = 9, gain: float = 10.0):
        super().__init__()
        self.rows, self.values, self.gain = rows, values, gain
        self.read = torch.nn.Linear(hidden, rows * values)
        # a small start and a gain: Adam moves the head `gain` times faster than the backbone
        torch.nn.init.normal_(self.read.weight, std=0.02 / gain, generator=torch.Generator().manual_seed(seed))
        torch.nn.init.zeros_(self.read.bias)

    def loss(self, embeddings: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the (N, rows) values, 1-based, read off (N, D) unit-length embeddings."""
        logits = self.gain * self.read(embeddings * 10)
        return torch.nn.functional.cross_entropy(logits.view(-1, self.values), (values - 1).flatten())


def base_examples(step: int, cfg: TrainConfig, curriculum_steps: int, partial_captions: bool = False,
                  reasoning: int = 0, latent: int = 0, kind_weights: dict | None = None,
                  page_siblings: bool = False, questions: int = 0, page_reads: int = 0) -> list:
    """Perception pairs for one step: the number of objects per scene grows 1 -> 9 over the curriculum.
    Each pair is (input, caption, alignment text): the caption, or with partial_captions half of the time
    a partial one. `reasoning`: that many (training query, gold CoT) pairs, the reasoner's SFT; `latent`:
    that many (training query, gold CoT, think budget k) triples, the latent reasoner's. kind_weights: the
    perception kinds' shares (default KIND_WEIGHTS). page_siblings: each page comes with a sibling page (the same
    items, other values) as one more pair, so that the alignment must tell pages apart by their values.
    questions: that many perception questions (input + question, answer, the answer's alternatives).
    page_reads: that many (page, caption) pairs whose values PageValueHead reads off the page's embedding."""
    rng = random.Random(f"base/{cfg.seed}/{step}")
    max_objects = min(9, 1 + int(8 * step / max(1, curriculum_steps)))
    weights = kind_weights or KIND_WEIGHTS
    kinds = rng.choices(list(weights), weights=list(weights.values()), k=cfg.batch_size)
    pairs = []

    def add(inp, caption):
        pairs.append((inp, caption, partial_caption(caption, rng) if partial_captions else caption))
    for kind in kinds:
        add(*bench.perception_example(kind, rng, max_objects=max_objects))
        if page_siblings and kind == "page":
            add(*bench.page_sibling_example(pairs[-1][1], rng))
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
    asked = [bench.perception_question(rng.choice(bench.QUESTION_KINDS), rng) for _ in range(questions)]
    read = [bench.perception_example("page", rng) for _ in range(page_reads)]
    return [pairs, texts, reasoned, latent_rows, asked, read]


def partial_caption(caption: str, rng: random.Random) -> str:
    """The full caption or, half of the time, at least two of its " , "-separated facts, in order."""
    facts = caption.split(" , ")
    if len(facts) <= 2 or rng.random() < 0.5:
        return caption
    keep = sorted(rng.sample(range(len(facts)), rng.randint(2, len(facts) - 1)))
    return " , ".join(facts[i] for i in keep)


def perception_step(model, data, cfg: TrainConfig, step: int = 0) -> dict:
    pairs, texts, reasoned, latent, asked, read = data  # base_examples' six lists
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
    # questions embed as their answer, ranked against every answer of the question types in the step
    answers = sorted({a for _, _, choices in asked for a in choices})
    question_rows = [p.prompt_row(inp, "base question") for inp, _, _ in asked]
    answer_rows = [p.prompt_row(a, "base answer") for a in answers]
    read_rows = [p.prompt_row(page, "base page") for page, _ in read]
    out = forward_by_length(model, caption_rows + lm_rows + image_rows + text_rows + question_rows + answer_rows
                            + read_rows)
    n = len(image_rows)
    _, img, txt, q, a, pages = out.embeddings.split(
        [len(caption_rows) + len(lm_rows), n, n, len(question_rows), len(answer_rows), len(read_rows)])
    con = info_nce(img, txt, torch.arange(n, device=img.device), cfg.temperature, symmetric=True)
    logged = {"generative": out.cot_loss, "contrastive": con}
    embedding_loss = con
    if asked:
        positive = torch.tensor([answers.index(ans) for _, ans, _ in asked], device=q.device)
        logged["answering"] = info_nce(q, a, positive, cfg.temperature)
        embedding_loss = embedding_loss + logged["answering"]
    if read:
        values = torch.tensor([[v for _, v in bench.page_rows(caption)] for _, caption in read], device=pages.device)
        logged["page_values"] = model.page_value_head.loss(pages, values)
        embedding_loss = embedding_loss + logged["page_values"]
    return {"loss": out.cot_loss + cfg.cot_weight * embedding_loss, **logged}


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
READING_WEIGHTS = {"scene": 0.5, "page": 0.35, "digits": 0.05, "video": 0.05, "crop": 0.05}


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


LATER_STAGES = ("reading", "reasoning", "answering")  # after stage 1, in order; each trains in `<out>.work-<name>`


def _later_stage_config(steps: int, seed: int, lr: float, batch_size: int, warmup_steps: int) -> TrainConfig:
    """What the stages after stage 1 share: the vision tower trains, the alignment temperature of stage 1."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, temperature=0.07,
                       cot_weight=1.0, freeze_vision=False, checkpoint_every=100, log_every=25, seed=seed)


def _stage(model: TTEFlashModel, out: str, name: str, cfg: TrainConfig, data, progress: bool, **record) -> dict:
    """Train one stage after stage 1 (its own work directory, so a killed run resumes within it)."""
    t0 = time.time()
    state = train(model, cfg, f"{out}.work-{name}", data, step_fn=perception_step, progress=progress,
                  desc=f"base: {name}")
    return {"steps": cfg.steps, "lr": cfg.lr, **record, "train_seconds": state["train_seconds"],
            "wall_seconds": time.time() - t0, "history_last": state["history"][-1]}


def _reading_stage(model: TTEFlashModel, out: str, steps: int, seed: int, progress: bool,
                   page_siblings: bool = False) -> dict:
    """Stage 2: perception again at a third of stage 1's learning rate, weighted towards what stage 1 leaves
    unread. After stage 1 the base names a page's items but not their values (0% of pages exact, though a
    linear probe reads every value from the vision features) and lists 37.5% of scenes exactly. At this rate
    the language model learns to take each row's value within about 100 steps of pages, and scenes go to
    92.5% in 400 steps of scenes (benchmarks/base_page_probe.py, benchmarks/results/base_page_probe_cpu.jsonl)."""
    cfg = _later_stage_config(steps, seed + 2, lr=5e-4, batch_size=32, warmup_steps=10)
    return _stage(model, out, "reading", cfg,
                  lambda s: base_examples(s, cfg, 0, kind_weights=READING_WEIGHTS, page_siblings=page_siblings),
                  progress, kind_weights=READING_WEIGHTS, page_siblings=page_siblings)


def _reasoning_stage(model: TTEFlashModel, out: str, steps: int, seed: int, progress: bool,
                     latent_rows: int = 0) -> dict:
    """Stage 3, the reasoner's SFT (as TTE fine-tunes its reasoner before any embedding training): write the
    gold CoT after training-split queries ([query]<|cot|> CoT, the explicit-CoT layout; no candidates),
    while perception and alignment go on at half the batch so they are not forgotten."""
    cfg = _later_stage_config(steps, seed + 1, lr=1e-3, batch_size=16, warmup_steps=20)
    return _stage(model, out, "reasoning", cfg,
                  lambda s: base_examples(s, cfg, 0, reasoning=REASONING_ROWS, latent=latent_rows),
                  progress, rows_per_step=REASONING_ROWS, latent_rows_per_step=latent_rows)


ANSWERING_ROWS = 32  # perception questions per answering step, beside 16 perception pairs and 16 reasoning rows
PAGE_READS = 16  # pages per answering step whose values are read off their embeddings


def _answering_stage(model: TTEFlashModel, out: str, steps: int, seed: int, progress: bool,
                     page_reads: int = 0) -> dict:
    """Stage 4: the embedding token learns to embed a question about an input as its answer (a perception
    question: one attribute, digit or page value read off the input; no hop, no count, no arithmetic),
    ranked against every answer of its kind, while alignment and the reasoner's SFT go on beside it.
    Up to stage 3 the embedding token only ever summarises a whole input (image <-> caption).
    page_reads: pages per step whose row values PageValueHead must read off their embeddings. Without it no
    page value reaches the embedding token: a page's embedding and its sibling's (other values) have cosine
    0.993, and no contrastive objective moves them (benchmarks/page_saddle.py)."""
    cfg = _later_stage_config(steps, seed + 3, lr=5e-4, batch_size=16, warmup_steps=20)
    if page_reads:  # attached before train(): the head trains and checkpoints with the model, and is not saved
        model.page_value_head = PageValueHead(model.vlm.config.get_text_config().hidden_size, seed).to(model.device)
    try:
        return _stage(model, out, "answering", cfg,
                      lambda s: base_examples(s, cfg, 0, reasoning=REASONING_ROWS // 2, questions=ANSWERING_ROWS,
                                              page_reads=page_reads),
                      progress, rows_per_step=ANSWERING_ROWS, page_reads=page_reads)
    finally:
        if page_reads:
            del model.page_value_head


@torch.no_grad()
def answering_report(model, n: int = 40, seed: int = 12345) -> dict:
    """hit@1 of fresh perception questions against every answer of their kind, per question kind."""
    rng = random.Random(f"answering-check/{seed}")
    report = {}
    for kind in bench.QUESTION_KINDS:
        asked = [bench.perception_question(kind, rng) for _ in range(n)]
        q = model.encode([inp for inp, _, _ in asked], convert_to_tensor=True)
        answers = sorted({a for _, _, choices in asked for a in choices})
        embedded = dict(zip(answers, model.encode(answers, role="document", convert_to_tensor=True)))
        hits = sum(choices[int((torch.stack([embedded[c] for c in choices]) @ row).argmax())] == answer
                   for row, (_, answer, choices) in zip(q, asked))
        report[kind] = hits / n
    return report


def build_base(out: str, steps: int = 2000, reasoning_steps: int = 400, seed: int = 0, progress: bool = True,
               device: str = "cpu", lr: float = 1.5e-3, partial_captions: bool = False,
               perception: str | None = None, latent_rows: int = 0, reading_steps: int = 800,
               page_siblings: bool = False, answering_steps: int = 600, page_reads: int = PAGE_READS,
               **backbone_kwargs) -> dict:
    """Train and save the base; `backbone_kwargs` go to build_tiny_backbone (default: 256 hidden, 4 layers).

    perception: a saved stage-1 checkpoint (a base built with no later stage) to start stage 2 from,
    instead of training stage 1 again. reading_steps / reasoning_steps / answering_steps: the later stages' steps
    (0 skips one).
    latent_rows: stage-3 rows per step that also train TTE-Flash's CoT
    branch (the gold CoT decoded from k think tokens alone). Killed runs resume within the stage they were in."""
    t0 = time.time()
    if perception:
        model = TTEFlashModel.from_pretrained(perception, device=device)
        with open(os.path.join(perception, "base_info.json")) as f:
            stage1 = json.load(f)
        if any(stage1.get(f"{name}_stage") for name in LATER_STAGES):  # the record would lie about its weights
            raise ValueError(f"--perception {perception}: that base has trained past stage 1; pass a stage-1 "
                             "checkpoint (one built with --reading-steps 0 --reasoning-steps 0 --answering-steps 0)")
        stage1 = stage1.get("perception_stage", stage1)  # this code's stage-1 record, or an older base's info
        stage1 = {k: stage1[k] for k in ("steps", "partial_captions", "train_seconds", "wall_seconds", "history_last")}
        stage1["from"] = perception
    else:
        model, stage1 = _perception_stage(out, steps, seed, device, lr, partial_captions, progress, **backbone_kwargs)
    reading = _reading_stage(model, out, reading_steps, seed, progress, page_siblings) if reading_steps else None
    reasoning = _reasoning_stage(model, out, reasoning_steps, seed, progress, latent_rows) if reasoning_steps else None
    answering = _answering_stage(model, out, answering_steps, seed, progress, page_reads) if answering_steps else None
    stages = [s for s in (stage1, reading, reasoning, answering) if s]
    info = {"perception_stage": stage1, "reading_stage": reading, "reasoning_stage": reasoning,
            "answering_stage": answering,
            "train_seconds": sum(s["train_seconds"] for s in stages),
            "wall_seconds": sum(s["wall_seconds"] for s in stages),  # every stage, as one `make base` run
            "wall_seconds_this_run": time.time() - t0,
            "params": sum(p.numel() for p in model.parameters()),
            "perception": perception_report(model), "answering": answering_report(model),
            "reasoning": thought_accuracy(model),
            "benchmark": f"{bench.BENCH_NAME} {bench.BENCH_VERSION}", "torch": torch.__version__}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        with open(os.path.join(tmp, "base_info.json"), "w") as f:
            json.dump(info, f, indent=2)
    for work in ("", *(f"-{name}" for name in LATER_STAGES)):
        shutil.rmtree(f"{out}.work{work}", ignore_errors=True)
    return info


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """`tte-flash base` and `python -m tteflash.train.base` take the same flags."""
    ap.add_argument("--out", default="checkpoints/base")
    ap.add_argument("--steps", type=int, default=2000, help="stage-1 optimizer steps (2,000: 16 minutes on 2 cores, 36 on an earlier, slower machine)")
    ap.add_argument("--reading-steps", type=int, default=800,
                    help="stage-2 steps (perception at a lower rate, mostly scenes and pages); 0 skips it")
    ap.add_argument("--page-siblings", action="store_true",
                    help="in stage 2, align each page against a sibling page with the same items and other values")
    ap.add_argument("--reasoning-steps", type=int, default=400, help="stage-3 (reasoner SFT) steps; 0 skips it")
    ap.add_argument("--answering-steps", type=int, default=600,
                    help="stage-4 steps (questions about an input embedded as their answers); 0 skips it")
    ap.add_argument("--page-reads", type=int, default=PAGE_READS,
                    help="stage-4 pages per step whose row values a linear head reads off their embeddings; 0: none")
    ap.add_argument("--latent-rows", type=int, default=0,
                    help="stage-3 rows per step that decode the gold CoT from think tokens alone (TTE-Flash's CoT branch)")
    ap.add_argument("--perception", default=None, help="start from this stage-1 checkpoint instead of training stage 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--partial-captions", action="store_true",
                    help="align half of the images to partial captions (the recipe of the bases before 2026-11-26)")


def from_arguments(a: argparse.Namespace) -> dict:
    return build_base(a.out, a.steps, a.reasoning_steps, a.seed, device=a.device,
                      partial_captions=a.partial_captions, perception=a.perception,
                      latent_rows=a.latent_rows, reading_steps=a.reading_steps, page_siblings=a.page_siblings,
                      answering_steps=a.answering_steps, page_reads=a.page_reads)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Pretrain the small base checkpoint the demo starts from.")
    add_arguments(ap)
    print(json.dumps(from_arguments(ap.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
