"""Why page values never reach the embedding token: where E looks, and what moves it.

1. Attention: the share of E's attention on a page's item cells and on its value cells, per layer and head
   (a page is 3 rows of 4 visual tokens: the item word over three cells, the value in the fourth), and what
   the embeddings hold: a page's caption -> the page among 9 siblings (hit@1, chance 0.1), and the cosine of
   a page's embedding to its sibling's, and of a caption's to its sibling caption's (base_page_probe.py).
2. Training pages against sibling pages (the same items, other values), from a checkpoint, two ways, in
   parallel single-threaded processes:
   - `contrastive`: each page's caption -> the page among its 3 siblings and the batch's other pages;
   - `value_head`: a linear head reads each row's value off the page's embedding (a direct, page-only signal),
     alone for the first `--head-only-steps` steps, then beside the contrastive loss.
   The contrastive loss cannot fall below ln 4 = 1.39 unless the page embeddings hold the values.

    python benchmarks/page_saddle.py --base checkpoints/base --steps 300
    python benchmarks/page_saddle.py --base checkpoints/base --steps 0     # part 1 only

Recorded: benchmarks/results/page_saddle_cpu.jsonl (2 cores, 2026-12-06). Its first three lines are the command
above on the base committed before stage 4 read page values (checkpoints/base at commit 203b274, run from a copy
at /tmp/base-ans600): part 1, then the two variants; the fourth is `--steps 0` on the base committed since.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time


def attention_shares(model, n: int = 32) -> list[dict]:
    """Mean attention of E on the item cells and on the value cells of fresh pages, per layer and head."""
    import torch

    from tteflash.data import bench

    rng = random.Random("page-saddle/attention")
    batch = model.make_batch([model.document_row(bench.perception_example("page", rng)[0], "page") for _ in range(n)])
    image = batch.input_ids[0] == model.processor.image_token
    with torch.no_grad():
        out = model.vlm.model(**batch.model_inputs(), use_cache=False, output_attentions=True)
    rows = []
    for layer, att in enumerate(out.attentions):
        on_image = att[:, :, int(batch.embed_index[0]), image].mean(0).reshape(att.shape[1], -1, 4)  # (heads, rows, 4)
        for head, cells in enumerate(on_image):
            rows.append({"layer": layer, "head": head, "items": round(float(cells[:, :3].sum()), 3),
                         "values": round(float(cells[:, 3].sum()), 3)})
    return rows


def _train(variant: str, a) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from tteflash.data import bench
    from tteflash.losses import info_nce
    from tteflash.model import TTEFlashModel
    from tteflash.train.steps import forward_by_length

    model = TTEFlashModel.from_pretrained(a.base, {"think_tokens": 0})
    for p in model.vlm.model.visual.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    head = torch.nn.Linear(model.vlm.config.get_text_config().hidden_size, 3 * 9)
    opt = torch.optim.AdamW([{"params": params, "lr": a.lr}, {"params": head.parameters(), "lr": 10 * a.lr}])
    rng, p = random.Random("page-saddle/train"), model.processor
    model.train()
    log, window, t = [], [], time.time()
    for step in range(a.steps):
        captions, pages, values, positive = [], [], [], []
        for _ in range(8):
            page, caption = bench.perception_example("page", rng)
            positive.append(len(pages))
            captions.append(p.prompt_row(caption, "caption"))
            for inp, c in [(page, caption)] + [bench.page_sibling_example(caption, rng) for _ in range(3)]:
                pages.append(p.prompt_row(inp, "page"))
                values.append([int(fact.split()[1]) - 1 for fact in c.split(" , ")])
        docs = forward_by_length(model, pages).embeddings
        contrastive = info_nce(forward_by_length(model, captions).embeddings, docs, torch.tensor(positive), a.temperature)
        head_loss = F.cross_entropy(head(docs * 10).view(-1, 9), torch.tensor(values).view(-1))
        if variant == "value_head":
            loss = head_loss if step < a.head_only_steps else head_loss + contrastive
        else:
            loss = contrastive
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append((contrastive.item(), head_loss.item()))
        if (step + 1) % 25 == 0:
            c, h = (sum(x) / len(window) for x in zip(*window))
            log.append({"step": step + 1, "contrastive": round(c, 3), "value_head": round(h, 3)})
            window = []
    print(json.dumps({"variant": variant, "base": a.base, "steps": a.steps, "lr": a.lr, "head_only_steps": a.head_only_steps,
                      "seconds": round(time.time() - t), "log": log}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="checkpoints/base")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--head-only-steps", type=int, default=60, help="first steps of `value_head` that train the head alone")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=0.05)
    a = ap.parse_args()
    from tteflash.model import TTEFlashModel

    from base_page_probe import sibling_cosines, sibling_retrieval

    model = TTEFlashModel.from_pretrained(a.base, {"think_tokens": 0}, attn_implementation="eager").eval()
    print(json.dumps({"base": a.base, "page_among_siblings": sibling_retrieval(model),
                      "sibling_cosines": sibling_cosines(model),
                      "attention_of_E_on_page_cells": attention_shares(model)}), flush=True)
    if not a.steps:
        raise SystemExit
    procs = [mp.get_context("spawn").Process(target=_train, args=(v, a)) for v in ("contrastive", "value_head")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
