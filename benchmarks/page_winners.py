"""On doc_table_ret's test queries, which candidate wins: the target, a page with the query's two items and
other values, or a page with other items? Chance among the four pages holding both items is 25%.

    python benchmarks/page_winners.py runs/reading-base/seed0/{explicit_cot,no_think,tte_flash_k2}/model

An explicit-CoT checkpoint is read as its oracle (gold CoT). One JSON line per checkpoint.
"""
from __future__ import annotations

import argparse
import collections
import json

import torch

from tteflash.data import bench
from tteflash.model import TTEFlashModel


def page_winners(model, examples) -> dict:
    oracle = model.config.method == "explicit_cot"
    queries = model.encode([e.query for e in examples], convert_to_tensor=True,
                           cot=[e.cot for e in examples] if oracle else None)
    wins = collections.Counter()
    for q, e in zip(queries, examples):
        best = int(torch.argmax(model.encode(e.candidates, role="document", convert_to_tensor=True) @ q))
        x, y = e.meta["items"]
        items = {item for item, _ in e.meta["facts"][best]}
        wins["target" if best == e.target else "same items" if {x, y} <= items else "other items"] += 1
    return dict(wins)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    a = ap.parse_args()
    examples = bench.load_split("test", tasks=["doc_table_ret"])
    for path in a.checkpoints:
        model = TTEFlashModel.from_pretrained(path)
        print(json.dumps({"checkpoint": path, "oracle": model.config.method == "explicit_cot",
                          **page_winners(model, examples)}), flush=True)
