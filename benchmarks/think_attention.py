"""Where a trained model's embedding token looks, per task: its attention on the think tokens, the query's
text and its image or video tokens (mean over heads and test queries, per layer), and how alike the task's
query embeddings are (mean pairwise cosine). A think token the embedding token never reads cannot help it.

    python benchmarks/think_attention.py --model runs/demo/tte_flash_k8/model --n 32

Recorded: benchmarks/results/think_attention_cpu.jsonl, the models of `make demo` run from a fresh clone of
commit 9159aac (TTE-Flash K=8 and no-think, seed 0, 1,000 steps; 2 cores, 2026-12-06; --n 32). There, on the
two tasks that hop over colour and shape (hop_grounding, color_hop_vqa) TTE-Flash's E gives its think tokens
at most 3% of its attention in every layer (20-69% in the last layer on the other seven tasks), and on
grounding it also reads the question's text less than no-think's E does (layers 1-3: 4-17% against 20-73%).
benchmarks/results/think_attention_lr5e-4_cpu.jsonl: the same for `make demo` at commit c1adffb (learning rate
5e-4, no longer 1e-3). The two hop tasks still get at most 5% (every other task 6-98% in the last layer), but
the grounding queries are no longer alike (mean pairwise cosine 0.52, was 0.80; no-think 0.44).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from tteflash.data import bench  # noqa: E402
from tteflash.model import TTEFlashModel  # noqa: E402


def shares(model, examples, task: str) -> dict:
    """Attention of E on think / text / vision tokens per layer, and the queries' mean pairwise cosine."""
    batch = model.make_batch([model.query_row(e.query, f"{task} query") for e in examples])
    p = model.processor
    vision = (batch.input_ids == p.image_token) | (batch.input_ids == p.video_token)
    text = (batch.padding_mask > 0) & ~vision & ~batch.think_mask
    rows = torch.arange(len(examples))
    with torch.no_grad():
        out = model.vlm.model(**batch.model_inputs(), use_cache=False, output_attentions=True)
    by_layer = {"think": [], "text": [], "vision": []}
    for att in out.attentions:
        of_e = att[rows, :, batch.embed_index]  # (B, heads, L): E's attention over the row
        for key, where in (("think", batch.think_mask), ("text", text), ("vision", vision)):
            by_layer[key].append(round(float((of_e * where[:, None]).sum(-1).mean()), 3))
    emb = torch.nn.functional.normalize(torch.as_tensor(model.encode([e.query for e in examples], show_progress_bar=False)), dim=-1)
    n = len(examples)
    cosine = float(((emb @ emb.T).sum() - n) / (n * (n - 1)))
    return {"attention_of_E": by_layer, "query_cosine": round(cosine, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a trained TTE-Flash or no-think model directory")
    ap.add_argument("--n", type=int, default=32, help="test queries per task")
    a = ap.parse_args()
    model = TTEFlashModel.from_pretrained(a.model, attn_implementation="eager").eval()  # eager: attention weights
    for task in bench.TASK_NAMES:
        examples = bench.load_split("test", n_per_task=a.n, tasks=[task])
        print(json.dumps({"model": a.model, "think_tokens": model.config.think_tokens, "task": task, "n": a.n,
                          **shares(model, examples, task)}), flush=True)


if __name__ == "__main__":
    main()
