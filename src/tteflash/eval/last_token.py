"""Baselines through the same harness: a plain VLM embedded by last-token pooling (VLM2Vec style).

No embedding token, no think tokens: the prompt's last token's final hidden state, L2-normalised, as
VLM2Vec pools Qwen2-VL. An optional PEFT/LoRA adapter (e.g. VLM2Vec-V2.0 on Qwen2-VL-2B) is merged
into the backbone. Known difference from the reference: our processor wraps image / video tokens in
<|vision_start|> ... <|vision_end|>, the reference's raw prompt has only the pad tokens (docs/mmeb.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


class LastTokenEncoder:
    def __init__(self, model):
        self.model = model  # a TTEFlashModel: its processor and backbone are reused as they are
        self.config = {"method": "last_token", "backbone": type(model.vlm).__name__}

    @classmethod
    def from_pretrained(cls, name_or_path: str, adapter: str | None = None, **load_kwargs) -> "LastTokenEncoder":
        from ..model import TTEFlashModel
        model = TTEFlashModel.from_pretrained(name_or_path, {"think_tokens": 0}, **load_kwargs)
        if adapter:
            try:
                from peft import PeftModel
            except ImportError:
                raise ImportError("loading a LoRA adapter needs `peft` (pip install peft)") from None
            merged = PeftModel.from_pretrained(model.vlm, adapter).merge_and_unload()
            model.vlm = model.backbone.model = merged
        enc = cls(model)
        enc.config.update(model=name_or_path, adapter=adapter)
        return enc

    def to(self, device):
        self.model.to(device)
        return self

    def eval(self):
        self.model.eval()
        return self

    @torch.inference_mode()
    def encode(self, inputs, batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_tensor: bool = False, *, role: str = "query", **_):
        """Same inputs as TTEFlashModel.encode; role is accepted and ignored (both sides are encoded alike)."""
        m = self.model
        items, single = m._as_list(inputs)
        chunks = []
        starts = range(0, len(items), batch_size)
        for s in tqdm(starts, desc="encode", disable=not show_progress_bar):
            rows = [m.processor.prompt_row(x, f"input {s + i}") for i, x in enumerate(items[s:s + batch_size])]
            for r in rows:
                r.embed = False
            batch = m.make_batch(rows)
            h = m.vlm.model(**batch.model_inputs(), use_cache=False).last_hidden_state
            chunks.append(F.normalize(h[torch.arange(len(rows)), batch.last_index].float(), dim=-1))
        dim = m.vlm.config.get_text_config().hidden_size
        emb = torch.cat(chunks) if chunks else torch.zeros(0, dim)
        emb = emb[0] if single else emb
        return emb if convert_to_tensor else emb.cpu().numpy()


__all__ = ["LastTokenEncoder"]
