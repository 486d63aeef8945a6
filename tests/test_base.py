"""The base pretraining's data: full captions for the retrieval alignment, partial ones on request."""
import random

import pytest
import torch

from tteflash.data import bench
from tteflash.train.base import partial_caption


def test_partial_caption_keeps_ordered_subsets_of_at_least_two_facts():
    caption = "red circle , blue square , green cross , orange triangle"
    facts = caption.split(" , ")
    rng = random.Random(0)
    seen = {partial_caption(caption, rng) for _ in range(200)}
    assert caption in seen and len(seen) > 5
    for text in seen - {caption}:
        kept = text.split(" , ")
        assert 2 <= len(kept) < len(facts)
        assert [facts.index(f) for f in kept] == sorted(facts.index(f) for f in kept)
    # captions with two facts or none to drop stay whole
    assert {partial_caption("digits 9 6", rng) for _ in range(20)} == {"digits 9 6"}
    assert {partial_caption("pear 5 , plum 2", rng) for _ in range(20)} == {"pear 5 , plum 2"}


def test_base_recipe_aligns_to_full_captions_unless_asked_for_partial_ones():
    from tteflash.train.base import base_examples
    from tteflash.train.trainer import TrainConfig

    cfg = TrainConfig(batch_size=16)
    full = base_examples(900, cfg, curriculum_steps=1000)[0]
    assert all(align == caption for _, caption, align in full)
    partial = base_examples(900, cfg, curriculum_steps=1000, partial_captions=True)[0]
    assert any(align != caption for _, caption, align in partial)
    assert all(set(align.split(" , ")) <= set(caption.split(" , ")) for _, caption, align in partial)


def test_reading_stage_draws_perception_kinds_by_its_weights():
    from tteflash.train.base import READING_WEIGHTS, base_examples
    from tteflash.train.trainer import TrainConfig

    assert set(READING_WEIGHTS) == set(bench.PERCEPTION_KINDS)
    pairs = base_examples(7, TrainConfig(batch_size=64), 0, kind_weights={"page": 1.0})[0]
    for inp, caption, _ in pairs:  # pages: three (item, value) rows
        assert "image" in inp and [f.split()[0] in bench.ITEMS and f.split()[1].isdigit() for f in caption.split(" , ")] == [True] * 3
    pairs = base_examples(7, TrainConfig(batch_size=64), 0, kind_weights={"video": 1.0})[0]
    assert all("video" in inp for inp, _, _ in pairs)


def test_page_siblings_differ_from_their_page_in_values_only():
    """The reading stage aligns each page against a sibling: same items in the same order, other values."""
    from tteflash.train.base import base_examples
    from tteflash.train.trainer import TrainConfig

    def rows(caption):
        return [tuple(f.split()) for f in caption.split(" , ")]
    cfg = TrainConfig(batch_size=16)
    plain = base_examples(4, cfg, 0, kind_weights={"page": 0.5, "crop": 0.5})[0]
    pairs = base_examples(4, cfg, 0, kind_weights={"page": 0.5, "crop": 0.5}, page_siblings=True)[0]
    n_pages = sum(len(rows(c)) == 3 for _, c, _ in plain)
    assert n_pages and len(pairs) == len(plain) + n_pages
    i = 0
    while i < len(pairs):
        caption = pairs[i][1]
        if len(rows(caption)) == 3:  # a page, then its sibling
            page, sibling = rows(caption), rows(pairs[i + 1][1])
            assert [item for item, _ in sibling] == [item for item, _ in page] and sibling != page
            assert pairs[i + 1][2] == pairs[i + 1][1]  # aligned to its own full caption
            i += 2
        else:
            i += 1


def test_reasoning_stage_data_is_training_queries_with_their_gold_cot():
    from tteflash.train.base import base_examples
    from tteflash.train.trainer import TrainConfig

    reasoned = base_examples(3, TrainConfig(batch_size=8), curriculum_steps=0, reasoning=5)[2]
    assert len(reasoned) == 5
    for query, cot in reasoned:
        assert set(query) <= {"text", "image", "video"} and cot.split(" . ")[-1]
    assert base_examples(3, TrainConfig(batch_size=8), curriculum_steps=0)[2] == []  # stage 1 has none
    # the same step gives the same data (exact resume)
    again = base_examples(3, TrainConfig(batch_size=8), curriculum_steps=0, reasoning=5)[2]
    assert [c for _, c in again] == [c for _, c in reasoned]


def test_reasoning_stage_starts_from_a_saved_stage_one(tiny_base, tmp_path):
    from safetensors import safe_open

    from tteflash.model import TTEFlashModel
    from tteflash.train.base import PAGE_READS, build_base

    from conftest import TINY
    stage1 = str(tmp_path / "s1")
    first = build_base(stage1, steps=2, reading_steps=0, reasoning_steps=0, answering_steps=0, progress=False, **TINY)
    assert first["reading_stage"] is None and first["reasoning_stage"] is None and first["answering_stage"] is None
    info = build_base(str(tmp_path / "b"), reading_steps=1, reasoning_steps=1, answering_steps=1, perception=stage1,
                      progress=False)
    assert info["perception_stage"]["from"] == stage1 and info["perception_stage"]["steps"] == 2
    assert info["reading_stage"]["steps"] == info["reasoning_stage"]["steps"] == info["answering_stage"]["steps"] == 1
    assert set(info["answering"]) == set(bench.QUESTION_KINDS)
    # stage 4 reads page values with a head that trains with it and is not part of the saved base
    assert info["answering_stage"]["page_reads"] == PAGE_READS and "page_values" in info["answering_stage"]["history_last"]
    with safe_open(str(tmp_path / "b" / "model.safetensors"), "pt") as f:
        assert f.keys() and not any("page_value" in k for k in f.keys())
    TTEFlashModel.from_pretrained(str(tmp_path / "b"))
    # a base trained past stage 1 is not a stage 1: its later stages would go unrecorded
    for later in (tiny_base, str(tmp_path / "b")):
        with pytest.raises(ValueError, match="trained past stage 1"):
            build_base(str(tmp_path / "c"), reasoning_steps=1, perception=later, progress=False)
    reading_only = str(tmp_path / "r")
    build_base(reading_only, reading_steps=1, reasoning_steps=0, answering_steps=0, perception=stage1, progress=False)
    answering_only = str(tmp_path / "a")
    build_base(answering_only, reading_steps=0, reasoning_steps=0, answering_steps=1, perception=stage1, progress=False)
    for later in (reading_only, answering_only):
        with pytest.raises(ValueError, match="trained past stage 1"):
            build_base(str(tmp_path / "c"), reasoning_steps=1, perception=later, progress=False)


def test_latent_reasoning_rows_train_the_think_tokens_to_carry_the_cot(tiny_base):
    """--latent-rows: stage-2 rows [query][T_1..T_k] whose gold CoT is decoded from the think tokens alone
    (TTE-Flash's CoT branch). Their loss reaches the think positions' inputs; without them none are laid out."""
    import torch

    from tteflash.model import TTEFlashModel
    from tteflash.train.base import LATENT_BUDGETS, base_examples, perception_step
    from tteflash.train.trainer import TrainConfig

    cfg = TrainConfig(batch_size=4)
    data = base_examples(5, cfg, curriculum_steps=0, reasoning=2, latent=6)
    assert len(data[3]) == 6 and all(k in LATENT_BUDGETS for _, _, k in data[3])
    assert [c for _, c, _ in data[3]] == [c for _, c, _ in base_examples(5, cfg, 0, reasoning=2, latent=6)[3]]
    assert base_examples(5, cfg, 0, reasoning=2)[2] == data[2]  # explicit rows unchanged by adding latent ones
    model = TTEFlashModel.from_pretrained(tiny_base)
    think_ids = torch.tensor(model.processor._think_ids)
    seen = []  # (input ids, input embeddings) of every backbone call

    def keep(module, args, out):
        out.retain_grad()
        seen.append((args[0], out))
    model.vlm.get_input_embeddings().register_forward_hook(keep)
    think_grad = {}
    for name, latent in (("explicit only", []), ("with latent", data[3])):
        seen.clear()
        perception_step(model, data[:3] + [latent, [], []], cfg)["loss"].backward()
        at_think = [(out.grad[torch.isin(ids, think_ids)]) for ids, out in seen]
        think_grad[name] = sum(g.abs().sum().item() for g in at_think), sum(len(g) for g in at_think)
    assert think_grad["explicit only"] == (0, 0)
    grad, positions = think_grad["with latent"]
    assert positions == sum(k for _, _, k in data[3]) and grad > 0


def test_answering_rows_embed_each_question_against_every_answer_of_its_kind(tiny_base, monkeypatch):
    """Stage 4: a question row is the model's query encoding of the input with its question, and its positive is
    the document encoding of its answer, among every answer of the step's question kinds."""
    from tteflash.model import TTEFlashModel
    from tteflash.train import base
    from tteflash.train.trainer import TrainConfig

    model = TTEFlashModel.from_pretrained(tiny_base).eval()
    cfg = TrainConfig(batch_size=2)
    data = base.base_examples(0, cfg, curriculum_steps=0, questions=6)
    asked = data[4]
    assert len(asked) == 6 and base.base_examples(0, cfg, curriculum_steps=0)[4] == []
    calls, info_nce = [], base.info_nce

    def spy(queries, docs, positive, temperature, **kw):
        calls.append((queries, docs, positive))
        return info_nce(queries, docs, positive, temperature, **kw)
    monkeypatch.setattr(base, "info_nce", spy)
    with torch.no_grad():
        losses = base.perception_step(model, data, cfg)
    queries, docs, positive = calls[-1]  # the answering loss is the step's last InfoNCE
    assert torch.isfinite(losses["answering"])
    assert len(docs) == len({a for _, _, choices in asked for a in choices})
    expected_q = model.encode([inp for inp, _, _ in asked], convert_to_tensor=True)
    expected_a = model.encode([answer for _, answer, _ in asked], role="document", convert_to_tensor=True)
    torch.testing.assert_close(queries, expected_q, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(docs[positive], expected_a, atol=1e-4, rtol=1e-4)


def test_page_value_head_loss_is_the_cross_entropy_of_each_rows_value():
    from tteflash.train.base import PageValueHead

    torch.manual_seed(0)
    head = PageValueHead(hidden=8, gain=3.0)
    torch.nn.init.normal_(head.read.weight)
    emb = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    values = torch.tensor([[1, 9, 4], [7, 7, 2]])
    logits = 3.0 * (emb * 10 @ head.read.weight.T + head.read.bias)  # (2, 27): row r's values at 9r..9r+8
    nll = [-torch.log_softmax(logits[i, 9 * r:9 * r + 9], -1)[values[i, r] - 1] for i in range(2) for r in range(3)]
    torch.testing.assert_close(head.loss(emb, values), torch.stack(nll).mean())


def test_page_reads_are_captioned_pages_and_leave_the_other_rows_unchanged(tiny_base):
    """Stage 4's page rows: each caption is its page's rows, in order, and the step's value loss is the head's
    loss on the model's own document encodings of the pages against the captions' values."""
    import numpy as np

    from tteflash.data import render
    from tteflash.model import TTEFlashModel
    from tteflash.train import base
    from tteflash.train.trainer import TrainConfig

    cfg = TrainConfig(batch_size=2)
    data = base.base_examples(3, cfg, curriculum_steps=0, questions=2, page_reads=4)
    assert data[:5] == base.base_examples(3, cfg, curriculum_steps=0, questions=2)[:5]
    assert base.base_examples(3, cfg, curriculum_steps=0)[5] == []
    values = []
    for page, caption in data[5]:
        rows = tuple((item, int(v)) for item, v in (fact.split() for fact in caption.split(" , ")))
        assert np.array_equal(np.asarray(page["image"]), np.asarray(render.render_page(rows)))
        values.append([v for _, v in rows])
    model = TTEFlashModel.from_pretrained(tiny_base).eval()
    model.page_value_head = base.PageValueHead(model.vlm.config.get_text_config().hidden_size)
    with torch.no_grad():
        losses = base.perception_step(model, data, cfg)
        pages = model.encode([page for page, _ in data[5]], role="document", convert_to_tensor=True)
        expected = model.page_value_head.loss(pages, torch.tensor(values))
    torch.testing.assert_close(losses["page_values"], expected, atol=1e-4, rtol=1e-4)
