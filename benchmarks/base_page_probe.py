"""Why does a base not read page values? Two measurements on a checkpoint:

1. A linear probe: do the vision tower's features of a page's value cell hold the value? (logistic
   regression on the merged visual token of each row's value cell, fresh pages, held-out quarter) And does
   the embedding hold them: a page's caption -> the page among it and 9 siblings (same items, other values).
2. Continued training: perception alone for a few hundred steps at a low learning rate, with a choice of
   perception kinds, then greedy captions of every kind (`perception_report`).

    python benchmarks/base_page_probe.py --base STAGE1 --variants page,scene,reading --steps 400 --probe

Variants: a perception kind (`page`, `scene`, ...: that kind alone), `reading` (the base's reading-stage
mix, READING_WEIGHTS), `siblings` (pages only, each aligned against a sibling page: the same items, other
values), `partial` (pages only, half of them aligned to partial captions). Each runs in its own single-threaded process; one JSON line
per variant. Recorded: benchmarks/results/base_page_probe_cpu.jsonl. Its first two lines are of the earlier
3,200-step partial-caption base and an earlier version of this script, which ran `partial` and `page` at
lr 5e-4; the next three are the command above on the stage-1 base of commit 8fce73e (2026-12-06, 2 cores,
three processes at once): pages alone -> every page read, scenes alone -> 92.5% of scenes, the reading mix
-> both; a page among its siblings stays at chance (0.04-0.12) in every case. The sixth is
`--base checkpoints/base --variants siblings --lr 1e-3 --steps 300` on the base committed 2026-12-06.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import time


def value_probe(model, n_pages: int = 1000, seed: int = 0) -> dict:
    """Held-out accuracy of linear probes on the visual tokens of a page: value cell -> value, word cells -> item."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from tteflash.data import bench, render

    rng = random.Random(f"value-probe/{seed}")
    visual = model.backbone.model.model.visual
    cells, values, words, items = [], [], [], []
    with torch.no_grad():
        for _ in range(n_pages):
            page = bench._page(rng)
            pixels, thw = model.processor.vision.patchify([render.render_page(page)])
            out = visual(pixels, grid_thw=torch.tensor([thw]))
            feats = getattr(out, "pooler_output", out)  # merged tokens, row-major over 28-px cells
            feats = feats.reshape(len(page), 4, -1)
            for r, (item, value) in enumerate(page):
                cells.append(feats[r, 3].numpy()), values.append(value)
                words.append(feats[r, :3].reshape(-1).numpy()), items.append(item)
    split = 3 * len(cells) // 4

    def held_out(x, y):
        x, y = np.asarray(x), np.asarray(y)
        return float(LogisticRegression(max_iter=3000).fit(x[:split], y[:split]).score(x[split:], y[split:]))

    return {"value_cell_to_value": held_out(cells, values), "word_cells_to_item": held_out(words, items)}


def sibling_retrieval(model, n: int = 50, seed: int = 0) -> float:
    """hit@1 of caption -> page among the page and 9 siblings (chance 0.1): do page embeddings hold values?"""
    import torch

    from tteflash.data import bench

    rng = random.Random(f"sibling-retrieval/{seed}")
    hits = 0
    for _ in range(n):
        page, caption = bench.perception_example("page", rng)
        pool = [page] + [bench.page_sibling_example(caption, rng)[0] for _ in range(9)]
        pages = model.encode(pool, role="document", convert_to_tensor=True)
        hits += int(torch.argmax(pages @ model.encode([caption], role="document", convert_to_tensor=True)[0])) == 0
    return hits / n


def sibling_cosines(model, n: int = 50, seed: int = 1) -> dict:
    """Mean cosine of the embeddings of a page and its sibling, of their captions, and of unrelated captions."""
    from tteflash.data import bench

    rng = random.Random(f"sibling-cosines/{seed}")
    pages, captions, sibling_pages, sibling_captions = [], [], [], []
    for _ in range(n):
        page, caption = bench.perception_example("page", rng)
        sibling_page, sibling_caption = bench.page_sibling_example(caption, rng)
        pages.append(page), captions.append(caption)
        sibling_pages.append(sibling_page), sibling_captions.append(sibling_caption)
    def enc(items):
        return model.encode(items, role="document", convert_to_tensor=True)
    c, p = enc(captions), enc(pages)
    unrelated = (c @ c.T).fill_diagonal_(0).sum().item() / (n * (n - 1))
    return {"caption_vs_sibling_caption": (c * enc(sibling_captions)).sum(-1).mean().item(),
            "page_vs_sibling_page": (p * enc(sibling_pages)).sum(-1).mean().item(),
            "caption_vs_unrelated_caption": unrelated}


def _run(name: str, a) -> None:
    import torch
    torch.set_num_threads(1)
    from tteflash.data import bench
    from tteflash.model import TTEFlashModel
    from tteflash.train.base import READING_WEIGHTS, base_examples, partial_caption, perception_report, perception_step
    from tteflash.train.trainer import TrainConfig, train

    model = TTEFlashModel.from_pretrained(a.base)
    record = {"variant": name, "base": a.base, "steps": a.steps, "lr": a.lr}
    if a.probe:
        record["vision_probe"] = value_probe(model)
    record["before"] = {**perception_report(model, n=a.n_check), "page_among_siblings": sibling_retrieval(model),
                        "sibling_cosines": sibling_cosines(model)}
    cfg = TrainConfig(steps=a.steps, batch_size=32, lr=a.lr, warmup_steps=10, temperature=0.07, cot_weight=1.0,
                      freeze_vision=False, checkpoint_every=10**9, log_every=25, seed=0)

    def pages(step: int) -> list:  # `partial`: pages, half of them aligned to partial captions
        rng = random.Random(f"page-probe/{step}")
        pairs = []
        for _ in range(cfg.batch_size):
            inp, caption = bench.perception_example("page", rng)
            pairs.append((inp, caption, partial_caption(caption, rng)))
        return [pairs, [], [], [], [], []]  # base_examples' six lists

    weights = READING_WEIGHTS if name == "reading" else {"page": 1.0} if name == "siblings" else {name: 1.0}
    data = pages if name == "partial" else (
        lambda s: base_examples(s, cfg, 0, kind_weights=weights, page_siblings=name == "siblings"))
    t = time.time()
    state = train(model, cfg, os.path.join(a.out, name), data, step_fn=perception_step, progress=False)
    record.update(after={**perception_report(model, n=a.n_check), "page_among_siblings": sibling_retrieval(model),
                         "sibling_cosines": sibling_cosines(model)},
                  contrastive_loss={h["step"]: round(h["contrastive"], 4) for h in state["history"]},
                  seconds=round(time.time() - t),
                  caption_loss={h["step"]: round(h["generative"], 4) for h in state["history"]})
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="checkpoints/base")
    ap.add_argument("--out", default="runs/page_probe")
    ap.add_argument("--variants", default="page,reading", help="comma-separated: a perception kind, reading, siblings, partial")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--n-check", type=int, default=40, help="fresh images per kind captioned before and after")
    ap.add_argument("--probe", action="store_true", help="also fit the linear probes on the vision features")
    a = ap.parse_args()
    procs = [mp.get_context("spawn").Process(target=_run, args=(name, a)) for name in a.variants.split(",")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
