"""Two gloo processes on CPU train exactly as one process holding the merged batch."""
from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tteflash.config import TTEFlashConfig
from tteflash.model import TTEFlashModel
from tteflash.train import distributed
from tteflash.train.gradcache import grad_cache_step
from tteflash.train.trainer import TrainConfig, contrastive_step, train

# (name, grad_cache_chunk, vision tower trained, model settings): with the vision tower trained, a chunk of
# text-only targets leaves it unused; with an intermediate embedding layer, a chunk of targets never runs the
# layers above it. DDP must then find unused parameters (the trainer's choice, _may_leave_parameters_unused).
PARTS = (("plain", 0, False, {}), ("grad_cache", 3, False, {}), ("grad_cache_vision", 3, True, {}),
         ("grad_cache_embed_layer", 3, False, {"embed_layer": 1}))
CFG = TrainConfig(steps=2, batch_size=7, lr=3e-3, warmup_steps=1, log_every=1, hard_negatives=1, temperature=0.1)


def _model(model_dir: str, train_vision: bool, settings: dict):
    model = TTEFlashModel.from_pretrained(model_dir, settings)
    model.train()
    for p in model.vlm.model.visual.parameters():
        p.requires_grad_(train_vision)
    return model


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, model_dir: str, examples: list, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {}
        for name, chunk, vision, settings in PARTS:  # one step's losses and synchronised gradients
            model = _model(model_dir, vision, settings)
            net = distributed.wrap(model, find_unused_parameters=vision or bool(settings))
            mine = distributed.shard(examples)
            cfg = dataclasses.replace(CFG, grad_cache_chunk=chunk)
            if chunk:
                losses = grad_cache_step(net, mine, cfg, 0)
            else:
                losses = contrastive_step(net, mine, cfg, 0)
                losses["loss"].backward()
            result[name] = ({k: float(v.detach()) for k, v in losses.items()}, _grads(model), len(mine))
        model = TTEFlashModel.from_pretrained(model_dir)  # the trainer, unchanged, under torch.distributed
        hist = train(model, CFG, os.path.join(out, "run"), lambda step: examples, progress=False)
        result["train"] = (hist["history"], model.state_dict())
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_the_merged_batch(fresh_backbone, train_examples, tmp_path):
    # 7 examples: rank 0 takes 3, rank 1 takes 4; example 0 again on rank 1 (a target shared across ranks)
    examples = train_examples[:5] + [train_examples[0]] + train_examples[5:6]
    model_dir = str(tmp_path / "init")
    TTEFlashModel(fresh_backbone(seed=13), TTEFlashConfig(think_tokens=4)).save_pretrained(model_dir)
    mp.spawn(_worker, args=(2, _free_port(), model_dir, examples, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [ranks[r]["plain"][2] for r in range(2)] == [3, 4]

    for name, chunk, vision, settings in PARTS:
        one = _model(model_dir, vision, settings)
        want = contrastive_step(one, examples, dataclasses.replace(CFG, grad_cache_chunk=chunk), 0)
        want["loss"].backward()
        want_grads = _grads(one)
        for r in range(2):
            losses, grads, _ = ranks[r][name]
            assert losses.keys() == want.keys()
            for k in want:  # every rank reports the global batch's losses
                assert losses[k] == pytest.approx(float(want[k].detach()), rel=1e-5), (name, r, k)
            assert grads.keys() == want_grads.keys()
            for n in want_grads:  # DDP's average over ranks is the merged batch's gradient
                torch.testing.assert_close(grads[n], want_grads[n], rtol=1e-4, atol=1e-6, msg=f"{name} rank {r} {n}")

    one = TTEFlashModel.from_pretrained(model_dir)
    hist = train(one, CFG, str(tmp_path / "one"), lambda step: examples, progress=False)["history"]
    for r in range(2):
        ddp_hist, state = ranks[r]["train"]
        for a, b in zip(hist, ddp_hist):
            assert a.keys() == b.keys()
            for k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5), (r, k)
        for k, v in one.state_dict().items():  # AdamW's first steps are ~lr * sign(grad): atol, not rtol
            torch.testing.assert_close(state[k], v, rtol=0, atol=1e-4, msg=f"rank {r} {k}")
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [line["step"] for line in log] == [1, 2]  # written once, by rank 0
    assert os.path.exists(tmp_path / "run" / "checkpoint.pt")


def test_shard_needs_a_list_with_an_example_per_rank(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: (1, 3))
    assert distributed.shard(list(range(7))) == [2, 3]  # 7 over 3 ranks: 2, 2, 3
    with pytest.raises(ValueError, match="2 examples for 3 ranks"):
        distributed.shard([0, 1])
    with pytest.raises(TypeError, match="must return a list"):
        distributed.shard((0, 1, 2))


@pytest.mark.slow
def test_torchrun_cli_trains_and_saves_on_rank_zero(tiny_base, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tteflash.cli", "train",
           "--model", tiny_base, "--out", str(out), "--think-tokens", "4", "--steps", "2", "--batch-size", "4",
           "--hard-negatives", "1", "--log-every", "1", "--grad-cache-chunk", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 rank(s)" in res.stdout
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl")] == [1, 2]
    assert TTEFlashModel.from_pretrained(str(out / "model")).config.think_tokens == 4


def test_cli_train_help_lists_the_training_flags(capsys):
    from tteflash.cli import main

    with pytest.raises(SystemExit) as e:  # the help text once failed on the "%" of a field docstring
        main(["train", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help lines are wrapped
    assert "--grad-cache-chunk" in out and "--lora-rank" in out and "10% of the peak" in out


def test_ddp_searches_for_unused_parameters_above_an_intermediate_embedding_layer(fresh_backbone):
    from tteflash.train.trainer import _may_leave_parameters_unused

    backbone = fresh_backbone(seed=3)
    assert not _may_leave_parameters_unused(TTEFlashModel(backbone, TTEFlashConfig(think_tokens=2)), CFG)
    assert _may_leave_parameters_unused(TTEFlashModel(backbone, TTEFlashConfig(think_tokens=2, embed_layer=1)), CFG)
