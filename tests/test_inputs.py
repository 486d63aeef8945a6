"""Bad inputs raise InputError naming the input and the problem; input forms and edge cases of encode()."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from tteflash.processing import InputError

from conftest import random_image

GOOD = ["a red circle", "two blue squares"]


def _raises(model, bad, match, **kw):
    """`bad` placed third in a list: the message must name "input 2" and the problem."""
    with pytest.raises(InputError, match=r"input 2\b.*" + match):
        model.encode(GOOD + [bad], **kw)


def test_missing_image_file(model8, tmp_path):
    missing = tmp_path / "nope.png"
    _raises(model8, {"image": str(missing)}, "image file not found.*nope.png")
    _raises(model8, missing, "image file not found")  # a Path is an image
    _raises(model8, {"text": "look", "image": str(tmp_path)}, "image file not found")  # a directory


def test_corrupt_image_file(model8, tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"\x89PNG not really an image" * 10)
    _raises(model8, {"image": str(bad)}, "cannot read image file.*garbage.png")
    truncated = tmp_path / "truncated.png"
    random_image(56, 56, 0).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    _raises(model8, {"image": truncated}, "cannot read image file")


@pytest.mark.parametrize("bad,what", [(5, "int"), ({1, 2}, "set"), (None, "NoneType"), (3.5, "float")])
def test_unsupported_input_type(model8, bad, what):
    _raises(model8, bad, f"unsupported input type {what}")


def test_empty_and_blank_text(model8):
    _raises(model8, "", "empty input")
    _raises(model8, {"text": ""}, "empty input")
    _raises(model8, {}, "empty input")
    _raises(model8, "   \n\t", "text is blank")
    _raises(model8, {"text": 7}, "text must be a string, got int")


def test_over_long_text(make_model):
    text = " ".join(["red circle blue square"] * 40)
    cut = make_model(think_tokens=4, max_text_tokens=16, truncate_text=True)
    full_ids = cut.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(full_ids) > 16
    row = cut.query_row(text)
    assert row.prompt == full_ids[:16]
    batch = cut.make_batch([row])
    assert batch.input_ids.shape == (1, 16 + 4 + 1)
    assert cut.encode(GOOD + [text]).shape == (3, 64)
    strict = make_model(think_tokens=4, max_text_tokens=16, truncate_text=False)
    _raises(strict, text, f"text has {len(full_ids)} tokens, more than the limit of 16")
    assert strict.encode(GOOD).shape == (2, 64)  # short texts are fine


def test_bad_videos(model8, img56, img84, video4):
    _raises(model8, {"video": [img56]}, r"video has 1 frame\(s\); at least 2")
    _raises(model8, {"video": []}, r"video has 0 frame\(s\)")
    _raises(model8, {"video": [img56, img84]}, "video frames differ in size")
    _raises(model8, {"video": img56}, "video must be a list of frames, got Image")
    _raises(model8, {"video": video4, "image": img56}, "either an image or a video")
    # a bad frame is named with its index
    _raises(model8, {"video": [img56, 42]}, "frame 1: unsupported image type int")


def test_unknown_keys(model8):
    _raises(model8, {"txt": "hello"}, r"unknown keys \['txt'\]")
    _raises(model8, {"text": "hi", "images": [1], "audio": 1}, r"unknown keys \['audio', 'images'\]")


def test_bad_image_arrays(model8):
    _raises(model8, np.zeros((5, 5, 2), np.uint8), "image array must have shape")
    _raises(model8, np.zeros((0, 5, 3), np.uint8), "image array must have shape")
    _raises(model8, {"image": np.full((28, 28, 3), np.inf, np.float32)}, "NaN or infinite")
    _raises(model8, {"image": 12}, "unsupported image type int")


def test_error_names_global_index_across_batches(model8):
    items = ["a", "b", "c", "d", "", "f"]
    with pytest.raises(InputError, match="input 4: empty input"):
        model8.encode(items, batch_size=2)


def test_input_error_is_value_error():
    assert issubclass(InputError, ValueError)


def test_empty_list_and_single_inputs(model8, img56, tmp_path):
    empty = model8.encode([])
    assert isinstance(empty, np.ndarray) and empty.shape == (0, 64)
    assert model8.encode([], convert_to_tensor=True).shape == (0, 64)
    assert model8.encode([], role="document").shape == (0, 64)
    one = model8.encode("a red circle")
    assert one.shape == (64,)
    np.testing.assert_allclose(one, model8.encode(["a red circle"])[0], atol=1e-6)
    assert model8.encode({"text": "hi", "image": img56}).shape == (64,)
    assert model8.encode(img56).shape == (64,)
    t = model8.encode("a red circle", convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (64,)
    # image forms agree: PIL, path, pathlib.Path, uint8 array, float array in [0, 1], tensor
    path = tmp_path / "img.png"
    img56.save(path)
    arr = np.array(img56)
    forms = [img56, {"image": str(path)}, pathlib.Path(path), arr, arr.astype(np.float32) / 255.0,
             torch.from_numpy(arr.copy())]
    embs = model8.encode(forms)
    for e in embs[1:]:
        np.testing.assert_allclose(e, embs[0], atol=1e-6)
    # a tuple works like a list
    np.testing.assert_allclose(model8.encode(tuple(GOOD)), model8.encode(GOOD), atol=1e-6)


def test_bad_role(model8):
    with pytest.raises(ValueError, match="role must be 'query' or 'document'"):
        model8.encode("hi", role="passage")


# ----------------------------------------------------------------------------- special-token strings
def test_text_containing_embed_token_string(model8):
    batch = model8.make_batch([model8.query_row("what does <|emb|> mean")])
    assert int(batch.embed_index[0]) == batch.input_ids.shape[1] - 1


def test_text_containing_vision_token_string(model8, img56):
    emb = model8.encode(["a <|image_pad|> b", {"text": "x", "image": img56}])
    assert emb.shape == (2, 64)
