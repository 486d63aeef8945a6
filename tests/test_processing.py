"""Processor: pixels equal to the upstream image processor; the think/E/CoT attention mask and positions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tteflash.processing import VIDEO, InputError, Row, VisionSpec, to_pil

from conftest import random_image

NEG = torch.finfo(torch.float32).min


# ----------------------------------------------------------------------------- pixels
def _upstream(backbone, img):
    out = backbone.image_processor(images=[img], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("size", [(84, 84), (56, 56)])
def test_patchify_equals_upstream_image_processor(backbone, model8, size):
    img = random_image(*size, seed=sum(size))
    ours, thw = model8.processor.vision.patchify([img])
    ref, ref_thw = _upstream(backbone, img)
    assert thw == ref_thw[0].tolist() == [1, size[1] // 14, size[0] // 14]
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(100, 70), (70, 100), (300, 200), (30, 30)])
def test_patchify_with_resize_matches_upstream(backbone, model8, size):
    img = random_image(*size, seed=7)
    ours, thw = model8.processor.vision.patchify([img])
    ref, ref_thw = _upstream(backbone, img)
    assert thw == ref_thw[0].tolist()
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=2e-2, rtol=0)


def test_vision_spec_read_from_image_processor(backbone):
    spec = VisionSpec.from_image_processor(backbone.image_processor)
    assert (spec.patch_size, spec.temporal_patch_size, spec.merge_size) == (14, 2, 2)
    assert (spec.min_pixels, spec.max_pixels) == (56 * 56, 112 * 112)
    # smart resize: multiples of 28, pixel count within [min, max]
    assert spec.target_size(84, 84) == (84, 84)
    assert spec.target_size(70, 100) == (56, 112)  # round(70/28)=2 (banker's), round(100/28)=4
    assert spec.target_size(200, 300) == (84, 112)  # 112*168 > max: shrink, floor to multiples of 28
    assert spec.target_size(10, 10) == (56, 56)  # below min: grow
    with pytest.raises(InputError, match="aspect ratio"):
        spec.target_size(1, 300)


def test_video_patch_layout(model8, img56, video4):
    spec = model8.processor.vision
    # an image is a 2-frame clip of itself (upstream repeats the frame to the temporal patch size)
    single, thw1 = spec.patchify([img56])
    double, thw2 = spec.patchify([img56, img56])
    assert thw1 == thw2 == [1, 4, 4]
    torch.testing.assert_close(single, double, atol=0, rtol=0)
    # a 4-frame video: 2 temporal patches; patch channels are (C, t, p, p), frames in order
    patches, thw = spec.patchify(video4)
    assert thw == [2, 4, 4] and patches.shape == (2 * 16, 3 * 2 * 14 * 14)
    p = patches.reshape(2, 16, 3, 2, 14, 14)
    for f, frame in enumerate(video4):
        alone = spec.patchify([frame])[0].reshape(16, 3, 2, 14, 14)[:, :, 0]
        torch.testing.assert_close(p[f // 2, :, :, f % 2], alone, atol=0, rtol=0)
    # odd frame count: the last frame is repeated
    odd, thw3 = spec.patchify(video4[:3])
    assert thw3 == [2, 4, 4]
    o = odd.reshape(2, 16, 3, 2, 14, 14)
    torch.testing.assert_close(o[1, :, :, 0], o[1, :, :, 1], atol=0, rtol=0)


def test_to_pil_arrays_match_pil(img56):
    arr = np.array(img56)
    assert np.array_equal(np.asarray(to_pil(arr, "x")), arr)
    assert np.array_equal(np.asarray(to_pil(torch.from_numpy(arr), "x")), arr)
    assert np.array_equal(np.asarray(to_pil(arr.astype(np.float32) / 255.0, "x")), arr)
    gray = arr[:, :, 0]
    assert np.array_equal(np.asarray(to_pil(gray[:, :, None], "x"))[:, :, 1], gray)
    with pytest.raises(InputError, match="x: image array must have shape"):
        to_pil(np.zeros((4, 4, 2), np.uint8), "x")
    with pytest.raises(InputError, match="x: image array holds NaN"):
        to_pil(np.full((4, 4, 3), np.nan, np.float32), "x")


def test_long_video_sampled_to_max_frames(make_model):
    m = make_model(think_tokens=2, max_video_frames=4)
    frames = [random_image(56, 56, 100 + i) for i in range(10)]
    row = m.processor.prompt_row({"video": frames})
    kind, patches, thw = row.pixels[0]
    assert kind == VIDEO and thw == [2, 4, 4]  # 4 sampled frames -> 2 temporal patches
    picked = [frames[i] for i in np.linspace(0, 9, 4).round().astype(int)]  # 0, 3, 6, 9
    ref, _ = m.processor.vision.patchify(picked)
    torch.testing.assert_close(patches, ref, atol=0, rtol=0)
    n = 2 * 4 * 4 // 4
    assert row.prompt.count(m.processor.video_token) == n
    assert row.prompt_types.count(VIDEO) == n


# ----------------------------------------------------------------------------- layout helpers
def _roles(proc, batch, b, row):
    """Index sets of one row: prompt, think, E, branch, padding."""
    L = batch.input_ids.shape[1]
    e = int(batch.embed_index[b])
    n_prompt, k = len(row.prompt), row.think
    n_branch = len(row.branch_cot or [])
    prompt = list(range(n_prompt))
    think = list(range(n_prompt, n_prompt + k))
    end = n_prompt + k + (1 if row.embed else 0)
    branch = list(range(end, end + n_branch))
    pad = list(range(end + n_branch, L))
    if row.embed:
        assert e == n_prompt + k
    assert batch.input_ids[b, think].tolist() == proc._think_ids[:k]
    return prompt, think, e, branch, pad


def _text_row(model, text="count the red circles", cot="digits 7 2 . 7 plus 2 is 9"):
    return model.query_row(text, cot=cot, train_cot=True)


@pytest.mark.parametrize("sees_query", [False, True])
def test_attention_mask_layout(make_model, sees_query):
    m = make_model(think_tokens=4, cot_sees_query=sees_query)
    p = m.processor
    long_row = _text_row(m)
    short_row = m.query_row("a blue square")  # no CoT, shorter: padded
    batch = p.build_batch([long_row, short_row], cot_sees_query=sees_query)
    B, L = batch.input_ids.shape
    mask = batch.attention_mask
    assert mask.shape == (B, 1, L, L) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, NEG}
    allowed = mask[:, 0] == 0

    prompt, think, e, branch, pad = _roles(p, batch, 0, long_row)
    assert len(branch) == len(long_row.branch_cot) >= 3 and pad == []
    assert batch.input_ids[0, branch[-1]] == p.cot_end
    # E sees prompt, think and itself; nothing after it
    assert allowed[0, e, : e + 1].all() and not allowed[0, e, e + 1:].any()
    # think tokens: causal over prompt + earlier think
    for t in think:
        assert allowed[0, t, : t + 1].all() and not allowed[0, t, t + 1:].any()
    for i, q in enumerate(branch):
        assert (mask[0, 0, q, think] == 0).all()          # always reads the think tokens
        assert mask[0, 0, q, e] == NEG                      # never E
        assert (mask[0, 0, q, branch[: i + 1]] == 0).all()  # causal within the CoT
        assert (mask[0, 0, q, branch[i + 1:]] == NEG).all()
        expected = 0.0 if sees_query else NEG
        assert (mask[0, 0, q, prompt] == expected).all()

    # the short row: causal over its own tokens, padding hidden from them, pads see only themselves
    prompt2, think2, e2, branch2, pad2 = _roles(p, batch, 1, short_row)
    assert branch2 == [] and len(pad2) > 0
    real = prompt2 + think2 + [e2]
    for q in real:
        assert allowed[1, q, : q + 1].all() and not allowed[1, q, q + 1:].any()
    for q in pad2:
        assert allowed[1, q].nonzero().flatten().tolist() == [q]
    assert (batch.input_ids[1, pad2] == p.pad_token).all()


def test_cot_tokens_blind_to_earlier_cot(make_model):
    """cot_sees_cot=False: each branch token reads the think tokens and itself, no earlier CoT token; the
    rest of the layout is unchanged."""
    m = make_model(think_tokens=4)
    p = m.processor
    row = _text_row(m)
    blind = p.build_batch([row], cot_sees_cot=False).attention_mask[0, 0] == 0
    usual = p.build_batch([row]).attention_mask[0, 0] == 0
    prompt, think, e, branch, _ = _roles(p, p.build_batch([row]), 0, row)
    for i, q in enumerate(branch):
        assert blind[q, think].all() and blind[q, q] and not blind[q, e] and not blind[q, prompt].any()
        assert not blind[q, branch[:i]].any() and usual[q, branch[:i]].all()
    others = [t for t in range(blind.shape[0]) if t not in branch]
    assert torch.equal(blind[others], usual[others])


def test_blind_cot_logits_ignore_earlier_cot(make_model):
    """Functionally: with cot_sees_cot off, a CoT token's logits do not change when an earlier CoT token does."""
    m = make_model(think_tokens=4, cot_sees_cot=False).eval()
    a = m.query_row("count the red circles", cot="digits 7 2 . 7 plus 2 is 9", train_cot=True)
    b = m.query_row("count the red circles", cot="digits 3 2 . 7 plus 2 is 9", train_cot=True)
    assert a.branch_cot != b.branch_cot and a.branch_cot[-4:] == b.branch_cot[-4:]
    with torch.no_grad():
        ha, hb = (m._backbone_pass(m.make_batch([r]))[0][0] for r in (a, b))
    last = slice(ha.shape[0] - 4, None)  # the last CoT tokens: equal inputs, earlier tokens differ
    assert torch.allclose(ha[last], hb[last], atol=1e-5)
    assert not torch.allclose(ha, hb, atol=1e-5)


def test_inline_cot_is_plain_causal_text_before_e(make_model):
    m = make_model(think_tokens=0, explicit_cot=True)
    row = m.query_row("count the red circles", cot="three red")
    batch = m.make_batch([row])
    L = batch.input_ids.shape[1]
    allowed = batch.attention_mask[0, 0] == 0
    assert torch.equal(allowed, torch.ones(L, L, dtype=torch.bool).tril())
    n = len(row.prompt)
    assert batch.input_ids[0, n] == m.processor.cot_start
    assert int(batch.embed_index[0]) == L - 1 == n + 1 + len(row.inline_cot)
    # each inline CoT token is predicted from the token before it
    assert batch.cot_predict[:, 1].tolist() == list(range(n, n + len(row.inline_cot)))
    assert batch.cot_labels.tolist() == row.inline_cot
    assert batch.position_ids[0, 0].tolist() == list(range(L))


def _check_branch_positions(batch, b, row):
    pos = batch.position_ids[:, b]  # (3, L)
    n_prompt, k = len(row.prompt), row.think
    t_k = n_prompt + k - 1
    first = t_k + (2 if row.embed else 1)
    n = len(row.branch_cot)
    # all three M-RoPE axes: first CoT position == E's position == T_K + 1, then +1 per token
    assert torch.equal(pos[:, first], pos[:, t_k] + 1)
    if row.embed:
        assert torch.equal(pos[:, first], pos[:, t_k + 1])
    assert torch.equal(pos[:, first:first + n], pos[:, first:first + 1] + torch.arange(n))
    # and the first CoT token is predicted from T_K
    sel = batch.cot_predict[:, 0] == b
    assert batch.cot_predict[sel, 1].tolist() == [t_k] + list(range(first, first + n - 1))
    assert batch.cot_labels[sel].tolist() == row.branch_cot


def test_branch_positions_continue_from_think_tokens(model8, img84, video4):
    cot = "digits 7 2 . 7 plus 2 is 9"
    rows = [model8.query_row("count the red circles", cot=cot, train_cot=True),
            model8.query_row({"text": "what is shown", "image": img84}, cot=cot, train_cot=True),
            model8.query_row({"text": "sum", "video": video4}, cot=cot, train_cot=True)]
    batch = model8.make_batch(rows)
    for b, row in enumerate(rows):
        _check_branch_positions(batch, b, row)
    # text row: plain 1-D positions, equal on every axis
    n = len(rows[0].prompt) + 8 + 1
    assert batch.position_ids[:, 0, :n].tolist() == [list(range(n))] * 3
    # image row: the vision block uses 2-D positions (axes differ), text after it is 1-D again
    pos = batch.position_ids[:, 1]
    img_tokens = (batch.input_ids[1] == model8.processor.image_token).nonzero().flatten()
    assert len(img_tokens) == 9
    assert not torch.equal(pos[1, img_tokens], pos[2, img_tokens])
    e = int(batch.embed_index[1])
    assert pos[0, e] == pos[1, e] == pos[2, e]
    assert pos[0, e] < e  # M-RoPE compresses the image: positions lag the index


def test_branch_positions_without_e_match_training(model8, img84):
    """decode_thoughts' rows (no E) put the CoT where training puts it (E's slot)."""
    p = model8.processor
    base = p.prompt_row({"text": "what is shown", "image": img84})
    cot = p.cot_ids("a red circle")
    train = Row(base.prompt, base.prompt_types, base.pixels, think=8, branch_cot=cot, embed=True)
    infer = Row(base.prompt, base.prompt_types, base.pixels, think=8, branch_cot=cot, embed=False)
    bt, bi = p.build_batch([train]), p.build_batch([infer])
    _check_branch_positions(bt, 0, train)
    _check_branch_positions(bi, 0, infer)
    e = int(bt.embed_index[0])
    assert int(bi.embed_index[0]) == -1
    keep = [i for i in range(bt.input_ids.shape[1]) if i != e]
    assert torch.equal(bt.position_ids[:, 0, keep], bi.position_ids[:, 0])
    assert torch.equal(bt.input_ids[0, keep], bi.input_ids[0])
    assert int(bi.last_index[0]) == bi.input_ids.shape[1] - 1


def test_build_batch_rejects_bad_rows(model8):
    p = model8.processor
    row = p.prompt_row("hello")
    with pytest.raises(ValueError, match="think tokens requested"):
        p.build_batch([Row(row.prompt, row.prompt_types, think=p.max_think_tokens + 1)])
    with pytest.raises(ValueError, match="at least one think token"):
        p.build_batch([Row(row.prompt, row.prompt_types, think=0, branch_cot=[p.cot_end])])
    assert p.max_think_tokens == 32


def test_row_length_is_its_width_in_a_batch(make_model, img84, video4):
    """`len(row)` (what length groups sort by) counts exactly the tokens build_batch lays out for it."""
    tte, explicit = make_model(think_tokens=8), make_model(think_tokens=0, explicit_cot=True)
    rows = [tte.query_row("count the red circles"),
            tte.query_row({"text": "what", "image": img84}, cot="three red", train_cot=True),
            tte.query_row({"text": "when", "video": video4}, cot="a b c", train_cot=True, think=2),
            tte.query_row("x", cot="seven", cot_in_prompt=True),
            tte.query_row({"text": "how", "image": img84}, cot="two", train_cot=True, budgets=(1, 2, 4), cot_think=2),
            tte.document_row(img84),
            explicit.query_row({"text": "what", "image": img84}, cot="digits 7 2"),
            tte.processor.prompt_row("decode me")]
    rows[-1].think, rows[-1].branch_cot, rows[-1].embed = 3, tte.processor.cot_ids("a b"), False  # decoding
    for row in rows:
        assert len(row) == int(tte.processor.build_batch([row]).padding_mask.sum())
    assert int(tte.processor.build_batch(rows).padding_mask.sum()) == sum(len(r) for r in rows)
