"""The base pretraining's data: full captions for the retrieval alignment, partial ones on request."""
import random

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
    full, _ = base_examples(900, cfg, curriculum_steps=1000)
    assert all(align == caption for _, caption, align in full)
    partial, _ = base_examples(900, cfg, curriculum_steps=1000, partial_captions=True)
    assert any(align != caption for _, caption, align in partial)
    assert all(set(align.split(" , ")) <= set(caption.split(" , ")) for _, caption, align in partial)
