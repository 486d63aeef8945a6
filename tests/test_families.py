"""The same wrapper serves Qwen2.5-VL and Qwen3-VL (tiny configs built in code)."""
import pytest
import torch

from tteflash.backbone import VISION_TOKENS, Backbone
from tteflash.config import TTEFlashConfig
from tteflash.data import bench
from tteflash.model import TTEFlashModel


def _ids(tok):
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def _text(tok, **extra):
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6], **extra.pop("rope", {})}
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, rope_parameters=rope, **extra)


def _pil_processor(**kw):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(**kw)


def qwen2_5_vl_model(tokenizer, config: TTEFlashConfig) -> TTEFlashModel:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    cfg = Qwen2_5_VLConfig(text_config=_text(tokenizer), vision_config=dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1],
        window_size=56, patch_size=14, spatial_merge_size=2, temporal_patch_size=2), **_ids(tokenizer))
    torch.manual_seed(0)
    return TTEFlashModel(Backbone(Qwen2_5_VLForConditionalGeneration(cfg), tokenizer,
                                  _pil_processor(min_pixels=56 * 56, max_pixels=112 * 112)), config)


def qwen3_vl_model(tokenizer, config: TTEFlashConfig) -> TTEFlashModel:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    cfg = Qwen3VLConfig(text_config=_text(tokenizer, head_dim=32, rope={"mrope_interleaved": True}), vision_config=dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
        spatial_merge_size=2, temporal_patch_size=2, deepstack_visual_indexes=[1], num_position_embeddings=64),
        **_ids(tokenizer))
    torch.manual_seed(0)
    return TTEFlashModel(Backbone(Qwen3VLForConditionalGeneration(cfg), tokenizer,
                                  _pil_processor(min_pixels=64 * 64, max_pixels=128 * 128, patch_size=16)), config)


def test_qwen2_5_vl_images_video_and_cot_loss(tokenizer):
    model = qwen2_5_vl_model(tokenizer, TTEFlashConfig(think_tokens=4))
    video, image = bench.make_example("video_digit_qa", "test", 0), bench.make_example("digit_sum", "test", 0)
    emb = model.encode([video.query, image.query, "a text"])
    assert emb.shape == (3, 64)
    assert abs(float((emb ** 2).sum(1).mean()) - 1) < 1e-5
    out = model(model.make_batch([model.query_row(image.query, cot=image.cot, train_cot=True)]))
    assert out.cot_loss is not None and torch.isfinite(out.cot_loss)
    _check_think_modes(model, [video.query, image.query])


def _check_think_modes(model, queries):
    """Recurrent think mode and detached think states run through this family's decoder layers."""
    parallel = model.encode(queries, convert_to_tensor=True)
    model.config.think_mode = "recurrent"
    try:
        recurrent = model.encode(queries, convert_to_tensor=True)
        assert torch.isfinite(recurrent).all() and not torch.allclose(recurrent, parallel, atol=1e-4)
        batch = model.make_batch([model.query_row(q) for q in queries])
        out = model(batch, detach_think=True)
        torch.testing.assert_close(out.embeddings, recurrent, atol=1e-5, rtol=0)
    finally:
        model.config.think_mode = "parallel"


def test_qwen3_vl_images_and_clear_video_error(tokenizer):
    model = qwen3_vl_model(tokenizer, TTEFlashConfig(think_tokens=4))
    image = bench.make_example("count_vqa", "test", 0)
    assert model.encode([image.query, "a text"]).shape == (2, 64)
    _check_think_modes(model, [image.query, "a text"])
    with pytest.raises(NotImplementedError, match="input 0: video"):
        model.encode([bench.make_example("video_digit_qa", "test", 0).query])
