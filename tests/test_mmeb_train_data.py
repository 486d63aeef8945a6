"""MMEB-train parquet and CoT-trace readers."""
from __future__ import annotations

import json

import pytest

from conftest import random_image
from tteflash.data.mmeb_train import MMEBTrainError, attach_traces, read_mmeb_train, read_traces


@pytest.fixture
def train_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / "images" / "VOC").mkdir(parents=True, exist_ok=True)
        random_image(28, 28, 0).save(tmp_path / "images" / "VOC" / name)
    f = tmp_path / "VOC2007" / "train-00000-of-00001.parquet"
    f.parent.mkdir()
    pq.write_table(pa.table({
        "qry": ["<|image_1|>\nRepresent the given image for classification", "find a dog"],
        "qry_image_path": ["images/VOC/a.jpg", ""],
        "pos_text": ["dog", "<|image_1|>\nRepresent the given image"],
        "pos_image_path": ["", "images/VOC/b.jpg"],
        "neg_text": ["cat", ""],
        "neg_image_path": ["", "images/VOC/c.jpg"],
    }), f)
    return f, tmp_path


def test_read_mmeb_train(train_parquet):
    f, root = train_parquet
    ex = read_mmeb_train(f, root)
    assert [e.id for e in ex] == ["VOC2007:0", "VOC2007:1"]
    assert ex[0].query == {"text": "\nRepresent the given image for classification", "image": str(root / "images/VOC/a.jpg")}
    assert ex[0].candidates == [{"text": "dog", "image": None}, {"text": "cat", "image": None}]
    assert ex[0].target == 0 and ex[0].hard_negatives == [1] and len(set(ex[0].cand_ids)) == 2
    assert ex[1].query == {"text": "find a dog", "image": None}
    assert ex[1].candidates[1] == {"text": "", "image": str(root / "images/VOC/c.jpg")}
    assert len(read_mmeb_train(f, root, limit=1)) == 1


def test_read_mmeb_train_errors(train_parquet, tmp_path):
    f, root = train_parquet
    with pytest.raises(MMEBTrainError, match="image file not found: .*a.jpg"):
        read_mmeb_train(f, tmp_path / "elsewhere")
    assert read_mmeb_train(f, tmp_path / "elsewhere", check_media=False)[0].query["image"].endswith("a.jpg")
    with pytest.raises(MMEBTrainError, match="parquet not found"):
        read_mmeb_train(tmp_path / "none.parquet", root)


def test_traces(train_parquet, tmp_path):
    f, root = train_parquet
    ex = read_mmeb_train(f, root)
    p = tmp_path / "traces.jsonl"
    p.write_text(json.dumps({"id": "VOC2007:1", "cot": "a dog on grass"}) + "\n\n")
    assert attach_traces(ex, read_traces(p)) == 1
    assert ex[0].cot is None and ex[1].cot == "a dog on grass"
    with pytest.raises(MMEBTrainError, match="1 examples have no CoT trace"):
        attach_traces(ex, read_traces(p), require=True)
    p.write_text('{"id": "x", "cot": "a"}\n{"id": "x", "cot": "b"}\n')
    with pytest.raises(MMEBTrainError, match="line 2: id 'x' appears twice"):
        read_traces(p)
    p.write_text('{"id": "x"}\n')
    with pytest.raises(MMEBTrainError, match="line 1: expected"):
        read_traces(p)
    p.write_text("not json\n")
    with pytest.raises(MMEBTrainError, match="line 1: not JSON"):
        read_traces(p)


def test_examples_feed_the_trainer_step(train_parquet, tmp_path, fresh_backbone):
    """MMEB-train examples with gold traces go straight into the trainer's contrastive + CoT step."""
    import torch

    from tteflash.config import TTEFlashConfig
    from tteflash.model import TTEFlashModel
    from tteflash.train.trainer import TrainConfig, contrastive_step
    f, root = train_parquet
    ex = read_mmeb_train(f, root)
    p = tmp_path / "traces.jsonl"
    p.write_text("".join(json.dumps({"id": e.id, "cot": f"dog {i}"}) + "\n" for i, e in enumerate(ex)))
    attach_traces(ex, read_traces(p), require=True)
    model = TTEFlashModel(fresh_backbone(), TTEFlashConfig(think_tokens=4))
    out = contrastive_step(model, ex, TrainConfig(batch_size=2, hard_negatives=1))
    assert torch.isfinite(out["loss"]) and "cot" in out
