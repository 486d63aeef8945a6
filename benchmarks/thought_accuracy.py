"""Does a model's reasoning come out right? Greedy CoT (TTE-Flash: decoded thoughts) for test queries
against the gold CoT, per task (tteflash.eval.thoughts).

    python benchmarks/thought_accuracy.py runs/demo/tte_flash_k8/model runs/demo/explicit_cot/model --n 30

Prints one JSON line per model.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from tteflash.eval.thoughts import thought_accuracy
from tteflash.model import TTEFlashModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="model directories (save_pretrained output)")
    ap.add_argument("--n", type=int, default=30, help="test queries per task")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--answer-first", action="store_true",
                    help="the models were trained on answer-first CoTs (TrainConfig.answer_first_cot)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for path in a.models:
        t0 = time.time()
        result = thought_accuracy(TTEFlashModel.from_pretrained(path).eval(), a.n, answer_first=a.answer_first)
        print(json.dumps({"model": path, "n_per_task": a.n, "seconds": round(time.time() - t0, 1), **result}), flush=True)


if __name__ == "__main__":
    main()
