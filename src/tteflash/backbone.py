"""Load upstream Qwen-VL-family backbones, or build a tiny Qwen2-VL offline (tests, demo).

No modeling code is vendored: everything here goes through `transformers`' own classes, so a
checkpoint from the hub, a local directory and the tiny model built in code take the same path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import transformers
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

# Special tokens the wrapper adds to any backbone. Think tokens are numbered so that a checkpoint
# trained with K_max tokens can serve any K <= K_max (the first K).
EMBED_TOKEN = "<|emb|>"
COT_START_TOKEN = "<|cot|>"
COT_END_TOKEN = "<|/cot|>"
PAD_TOKEN = "<|endoftext|>"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def think_token(i: int) -> str:
    return f"<|think_{i}|>"


def project_tokens(max_think_tokens: int) -> list[str]:
    return [EMBED_TOKEN, COT_START_TOKEN, COT_END_TOKEN] + [think_token(i) for i in range(1, max_think_tokens + 1)]


def load_image_processor(name_or_path: str):
    """The upstream image processor; the PIL variant where torchvision is absent."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    except ImportError:  # older transformers: the plain class works without torchvision
        from transformers import Qwen2VLImageProcessor as cls
    # AutoProcessor would silently return only the tokenizer for a saved Qwen-VL processor.
    return cls.from_pretrained(name_or_path)


@dataclass
class Backbone:
    model: torch.nn.Module  # an *ForConditionalGeneration with .model (vision + language) and .lm_head
    tokenizer: transformers.PreTrainedTokenizerBase
    image_processor: object


def add_project_tokens(backbone: Backbone, max_think_tokens: int) -> None:
    """Register think / embedding / CoT tokens and grow the embedding matrix.

    New rows start at the mean input embedding plus small noise: distinct but in-distribution.
    """
    tok = backbone.tokenizer
    missing = [t for t in project_tokens(max_think_tokens) if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if not missing:
        return
    tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    emb = backbone.model.get_input_embeddings()
    old = emb.weight.shape[0]
    if len(tok) > old:
        backbone.model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            w = backbone.model.get_input_embeddings().weight
            mean, std = w[:old].mean(0), w[:old].std()
            w[old:] = mean + 0.5 * std * torch.randn_like(w[old:])


def load_backbone(name_or_path: str, *, dtype: torch.dtype | str = "auto", attn_implementation: str = "sdpa",
                  device: str | torch.device | None = None) -> Backbone:
    """Load a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint from a hub id or a local directory."""
    config = AutoConfig.from_pretrained(name_or_path)
    if not hasattr(config, "vision_config"):
        raise ValueError(f"{name_or_path!r} is a {config.model_type!r} model, not a vision-language model of the Qwen-VL family")
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype, attn_implementation=attn_implementation)
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return Backbone(model, tokenizer, load_image_processor(name_or_path))


def train_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 600, max_think_tokens: int = 32):
    """A byte-level BPE trained in memory, with Qwen-VL's special tokens.

    Wrapped as the generic fast tokenizer, not `Qwen2Tokenizer`: on loading, the latter replaces the saved
    pre-tokenizer with Qwen2's digit-splitting regex, so a checkpoint would tokenize differently from the
    tokenizer its weights were trained with. The generic class keeps `tokenizer.json` authoritative.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, "<|im_start|>", "<|im_end|>", *VISION_TOKENS, *project_tokens(max_think_tokens)]
    bpe = Tokenizer(models.BPE())
    # Prefix space: a word has one token form at the start of a text and inside it ("15" and "... is 15").
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(corpus), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token=PAD_TOKEN,
                             unk_token=None, bos_token=None)
    tok.add_special_tokens({"additional_special_tokens": specials[1:]}, replace_extra_special_tokens=False)
    return tok


def build_tiny_backbone(tokenizer, *, hidden_size: int = 256, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                        intermediate_size: int = 768, vision_depth: int = 2, vision_dim: int = 128,
                        max_pixels: int = 112 * 112, seed: int = 0) -> Backbone:
    """A small randomly initialised Qwen2-VL built from a config (no download)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    head_dim = hidden_size // heads
    # M-RoPE splits head_dim/2 rotary frequencies over (t, h, w).
    quarter = head_dim // 2 // 4
    mrope = [head_dim // 2 - 3 * quarter, quarter + quarter // 2, quarter + quarter - quarter // 2]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": mrope},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None),
        vision_config=dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden_size, num_heads=4,
                           mlp_ratio=2, patch_size=14, temporal_patch_size=2, spatial_merge_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.config._attn_implementation = "sdpa"
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels)
    return Backbone(model, tokenizer, image_processor)


def save_backbone(backbone: Backbone, directory: str | os.PathLike) -> None:
    backbone.model.save_pretrained(directory, safe_serialization=True)
    backbone.tokenizer.save_pretrained(directory)
    backbone.image_processor.save_pretrained(directory)
