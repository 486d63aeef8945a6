"""LoRA / DoRA fine-tuning through peft (optional extra: `pip install 'tteflash[train]'`).

Adapters go on the language model's attention and MLP projections (`TARGETS`); the vision tower, norms
and the rest of the embedding matrix stay frozen. The project's own tokens (think tokens, E, the CoT
markers) are new rows that the base never trained, so they stay trainable through peft's trainable
tokens (`trainable_token_indices`: a delta on those rows only; with tied embeddings the LM head shares
it). The adapter is injected in place (`LoraModel`): `model.vlm` keeps its class and attributes, and
`train()` merges it into the weights at the end, so the model saves and loads as an ordinary checkpoint.
"""
from __future__ import annotations

from ..backbone import project_tokens

# Qwen-VL language-model projections; the vision tower's names (qkv, proj, fc1, fc2, linear_fc*) never match.
TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA / DoRA training (lora_rank > 0) needs peft: pip install 'tteflash[train]'") from None
    return peft


def project_token_ids(model) -> list[int]:
    """Ids of the tokens the wrapper added (add_project_tokens): E, the CoT markers, every think token."""
    return model.backbone.tokenizer.convert_tokens_to_ids(project_tokens(model.processor.max_think_tokens))


def apply_lora(model, rank: int, alpha: int, dora: bool = False):
    """Inject LoRA (DoRA with `dora`) adapters into model.vlm in place; returns peft's tuner (for merge_lora).
    Only the adapters and the project token rows require gradients afterwards."""
    peft = _peft()
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, use_dora=dora, target_modules=TARGETS,
                             trainable_token_indices=project_token_ids(model))
    return peft.LoraModel(model.vlm, config, "default")


def merge_lora(model, tuner) -> None:
    """Fold the adapters and token deltas into the weights and remove peft's layers."""
    merged = tuner.merge_and_unload()
    if merged is not model.vlm:  # in-place injection: the same module comes back
        raise RuntimeError("peft returned another module when merging the adapter")
