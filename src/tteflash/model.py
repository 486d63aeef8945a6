"""The TTE-Flash wrapper: one model whose configurations are the compared methods.

    no-think        [query][E]                       think_tokens=0
    TTE-Flash       [query][T_1..T_K][E]              think_tokens=K (CoT loss on a branch after E)
    recurrent       the same, T_i fed the state before  think_tokens=K, think_mode="recurrent"
    explicit CoT    [query]<|cot|>[CoT]<|/cot|>[E]    explicit_cot=True (CoT generated, or gold = oracle)

The embedding is the L2-normalised hidden state of E, so a checkpoint is an ordinary last-token
embedding model whose prompt happens to end with special tokens.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbone import Backbone, add_project_tokens, load_backbone, save_backbone
from .config import TTEFlashConfig
from .processing import Batch, Processor, Row
from .think import recurrent_pass, think_hooks

CONFIG_NAME = "tteflash_config.json"
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # encode precision -> CUDA autocast dtype


class _StopForward(Exception):
    """Raised by the early-stop hook: the layers above the embedding layer are never run."""


def _with_layer_input(layer: torch.nn.Module, run, stop: bool):
    """(run()'s result, the hidden states entering `layer`); with stop, the pass ends there and the result is None."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])
        if stop:
            raise _StopForward

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return run(), seen[0]
    except _StopForward:
        return None, seen[0]
    finally:
        handle.remove()


@dataclass
class Output:
    embeddings: torch.Tensor            # (B, D) L2-normalised; rows without E are zeros
    cot_loss: torch.Tensor | None       # mean token NLL over all CoT tokens in the batch
    cot_token_loss: torch.Tensor | None  # (N,) per CoT token
    budget_embeddings: torch.Tensor | None = None  # (B, len(Row.budgets) + 1, D): E_k per budget, then E (nested)


class TTEFlashModel(torch.nn.Module):
    def __init__(self, backbone: Backbone, config: TTEFlashConfig | None = None):
        super().__init__()
        self.config = config or TTEFlashConfig()
        add_project_tokens(backbone, max(self.config.think_tokens, 32))
        self.backbone = backbone
        self.vlm = backbone.model  # registered submodule: parameters, .to(), state_dict
        self.processor = Processor(backbone.tokenizer, backbone.image_processor, self.vlm.config,
                                   max_text_tokens=self.config.max_text_tokens,
                                   max_video_frames=self.config.max_video_frames, truncate=self.config.truncate_text)
        self.processor.bind_rope(self.vlm.model.get_rope_index)
        self._generate_params = set(inspect.signature(self.vlm.forward).parameters)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str, config: TTEFlashConfig | dict | None = None,
                        **load_kwargs) -> "TTEFlashModel":
        """A TTE-Flash checkpoint or a plain Qwen-VL backbone, from a hub id or a local directory.

        config: a TTEFlashConfig replaces the saved settings; a dict overrides some of them (e.g.
        `{"think_tokens": 8}` to start a TTE-Flash model from a base checkpoint).
        """
        from transformers.utils import cached_file

        saved = cached_file(name_or_path, CONFIG_NAME, _raise_exceptions_for_missing_entries=False)
        if not isinstance(config, TTEFlashConfig):
            base = {}
            if saved:
                with open(saved) as f:
                    base = json.load(f)
            config = TTEFlashConfig.from_dict({**base, **(config or {})})
        load_kwargs.setdefault("dtype", torch.float32 if not torch.cuda.is_available() else "auto")
        return cls(load_backbone(name_or_path, **load_kwargs), config)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        save_backbone(self.backbone, directory)
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            f.write(self.config.to_json())

    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vlm.parameters()).dtype

    # ------------------------------------------------------------------ rows
    def query_row(self, item, name: str = "query", *, cot: str | None = None, train_cot: bool = False,
                  think: int | None = None, cot_in_prompt: bool = False, budgets: tuple[int, ...] = (),
                  cot_think: int | None = None) -> Row:
        """The query side. `cot`: gold CoT (explicit: inline before E; TTE-Flash: branch target when train_cot,
        or inline before the think tokens with cot_in_prompt: the oracle view that distillation reads).
        budgets: also read E at these smaller think budgets; cot_think: the CoT branch reads that many
        think tokens (nested training, see processing.build_batch)."""
        row = self.processor.prompt_row(item, name)
        cfg = self.config
        if cot is not None and (cfg.explicit_cot or cot_in_prompt):
            row.inline_cot = self.processor.cot_ids(cot, f"{name} cot", cfg.max_cot_tokens)
        if not cfg.explicit_cot:
            row.think = cfg.think_tokens if think is None else think
            row.budgets, row.cot_think = tuple(budgets), cot_think
            if train_cot and row.think:
                if cot is None:
                    raise ValueError(f"{name}: training the CoT loss needs a gold CoT")
                row.branch_cot = self.processor.cot_ids(cot, f"{name} cot", cfg.max_cot_tokens)
        return row

    def document_row(self, item, name: str = "document") -> Row:
        row = self.processor.prompt_row(item, name)
        if self.config.think_on_targets and not self.config.explicit_cot:
            row.think = self.config.think_tokens
        return row

    def make_batch(self, rows: list[Row]) -> Batch:
        batch = self.processor.build_batch(rows, cot_sees_query=self.config.cot_sees_query,
                                           cot_sees_cot=self.config.cot_sees_cot, dtype=self.dtype)
        if self.device.type == "cuda":  # pinned host memory: the copy to the GPU does not block the host
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    # ------------------------------------------------------------------ forward
    def _embed_layer_module(self) -> torch.nn.Module | None:
        """The decoder layer whose input is hidden state `embed_layer`; None for the final (normed) state."""
        layers = self.vlm.model.language_model.layers
        n, i = len(layers), self.config.embed_layer
        if not -(n + 1) <= i <= n:
            raise ValueError(f"embed_layer {i} is out of range for a backbone with {n} layers")
        i %= n + 1
        return None if i == n else layers[i]

    def _backbone_pass(self, batch: Batch, *, detach_think: bool = False, stop_early: bool = False):
        """The backbone over a batch, with the think mode applied (see think.py).

        Returns (last hidden state, states at `embed_layer`). stop_early: the layers above an intermediate
        `embed_layer` are never run, and the last hidden state is None.
        """
        layer = self._embed_layer_module()
        if self.config.think_mode == "recurrent" and batch.think_mask.any():
            # the K fed-back states are last-layer states: every layer runs, whatever `embed_layer`
            last, states = recurrent_pass(self.vlm, batch, detach=detach_think, layer=layer)
            return last, (last if layer is None else states)

        def run():
            with think_hooks(self.vlm, batch.think_mask, None, detach_think):
                return self.vlm.model(**batch.model_inputs(), use_cache=False).last_hidden_state

        if layer is None:
            last = run()
            return last, last
        return _with_layer_input(layer, run, stop=stop_early)

    def forward(self, batch: Batch, *, detach_think: bool = False, cot_loss: bool = True) -> Output:
        """Embeddings at E and the CoT loss. detach_think: no gradient reaches the think-token states
        (the `detach` and `staged` schedules). cot_loss=False (encoding): no LM head at all, and the layers
        above an intermediate `embed_layer` are skipped."""
        want_cot = cot_loss and len(batch.cot_labels) > 0
        last, states = self._backbone_pass(batch, detach_think=detach_think, stop_early=not want_cot)
        index = torch.cat([batch.budget_index, batch.embed_index[:, None]], 1)  # (B, n + 1), E last
        emb = states.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, states.shape[-1]))
        emb = F.normalize(emb.float(), dim=-1) * (index >= 0)[..., None]  # rows without E: zeros
        token_loss = None
        if want_cot:
            h = last[batch.cot_predict[:, 0], batch.cot_predict[:, 1]]
            logits = self.vlm.lm_head(h).float()  # only at CoT positions: no full-vocabulary pass
            token_loss = F.cross_entropy(logits, batch.cot_labels, reduction="none")
        return Output(emb[:, -1], None if token_loss is None else token_loss.mean(), token_loss,
                      emb if batch.budget_index.shape[1] else None)

    # ------------------------------------------------------------------ inference
    def _as_list(self, inputs):
        single = isinstance(inputs, (str, dict)) or not isinstance(inputs, Sequence)
        return ([inputs] if single else list(inputs)), single

    @torch.inference_mode()
    def encode(self, inputs, batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_tensor: bool = False, *, role: str = "query", think_tokens: int | None = None,
               cot: Sequence[str] | None = None, normalize_embeddings: bool = True, precision: str = "bf16",
               num_workers: int | None = None, compile: bool = False):
        """One L2-normalised vector per input, sentence-transformers style, in the order given.

        inputs: a string, an image (path, PIL, array), a dict {text, image, video}, or a list of those.
        role: "query" (think tokens / CoT apply) or "document" (targets: plain [input][E]).
        cot: gold CoTs for the explicit-CoT oracle; without it an explicit-CoT model generates its CoT.
        normalize_embeddings: accepted for sentence-transformers compatibility; embeddings are always unit length.
        precision: "bf16", "fp16" or "fp32": autocast dtype on CUDA (CPU always computes in float32).
        num_workers: threads decoding and patchifying the next batch's inputs while the current one runs
            (default: up to 4; 0 = on the calling thread).
        compile: run `torch.compile`d decoder layers in this call (compiled on first use, then cached).

        Inputs are sorted by estimated length and batched with their neighbours, so padding is small;
        the result is in input order and equals encoding each input alone.
        """
        if role not in ("query", "document"):
            raise ValueError(f"role must be 'query' or 'document', got {role!r}")
        if precision not in _HALF:
            raise ValueError(f"precision must be one of {sorted(_HALF)}, got {precision!r}")
        items, single = self._as_list(inputs)
        if cot is not None and len(cot) != len(items):
            raise ValueError(f"got {len(cot)} CoTs for {len(items)} inputs")
        dim = self.vlm.config.get_text_config().hidden_size
        self.eval()
        order = sorted(range(len(items)), key=lambda i: -self.processor.estimate_length(items[i]))
        batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        generate = role == "query" and self.config.explicit_cot and cot is None

        def row(i):
            x, name = items[i], f"input {i}"
            if role == "document":
                return self.document_row(x, name)
            return self.query_row(x, name, cot=cot[i] if cot is not None else None, think=think_tokens)

        workers = (num_workers if num_workers is not None else min(4, os.cpu_count() or 1)) if len(batches) > 1 else 0
        pool = ThreadPoolExecutor(workers) if workers else None
        submit = (lambda idx: [pool.submit(row, i) for i in idx]) if pool else (lambda idx: idx)
        collect = (lambda pending: [f.result() for f in pending]) if pool else (lambda idx: [row(i) for i in idx])
        bar = tqdm(total=len(items), desc="encode",
                   disable=not (show_progress_bar if show_progress_bar is not None else len(batches) > 4))
        chunks = []
        try:
            pending = submit(batches[0]) if batches else None
            with self._fast_kernels(precision), self._compiled_layers(compile):
                for b, idx in enumerate(batches):
                    rows = collect(pending)
                    if b + 1 < len(batches):  # the next batch's pixels are prepared while this one runs
                        pending = submit(batches[b + 1])
                    if generate:
                        for r, ids in zip(rows, self._generate_cot(rows)):
                            r.inline_cot = ids
                    chunks.append(self(self.make_batch(rows), cot_loss=False).embeddings)
                    bar.update(len(idx))
        finally:
            bar.close()
            if pool:
                pool.shutdown(cancel_futures=True)
        emb = torch.cat(chunks) if chunks else torch.zeros(0, dim)
        emb = emb[torch.as_tensor(order, device=emb.device).argsort()]  # back to input order
        emb = emb[0] if single else emb
        return emb if convert_to_tensor else emb.cpu().numpy()

    @contextmanager
    def _fast_kernels(self, precision: str):
        """Autocast to half precision and flash-attention 2 (when installed) on CUDA; float32 elsewhere."""
        half = _HALF[precision]
        if self.device.type != "cuda" or half is None:
            yield
            return
        impl = self.vlm.config._attn_implementation
        flash = importlib.util.find_spec("flash_attn") is not None and impl != "flash_attention_2"
        if flash:  # encode-time batches are plain causal (2-D padding mask), which flash-attention 2 supports
            try:
                self.vlm.set_attn_implementation("flash_attention_2")
            except (ImportError, ValueError):  # installed but unusable here (GPU or build): keep SDPA
                flash = False
        try:
            with torch.autocast("cuda", dtype=half):
                yield
        finally:
            if flash:
                self.vlm.set_attn_implementation(impl)

    @contextmanager
    def _compiled_layers(self, on: bool):
        """Within the block, each decoder layer's forward is its compiled version (made once, cached on the
        layer). The forward only, not the module call: the think and early-stop hooks stay in eager code,
        and training and other calls keep the eager layers."""
        layers = list(self.vlm.model.language_model.layers) if on else []
        for layer in layers:
            if "_tteflash_compiled" not in vars(layer):
                layer._tteflash_compiled = torch.compile(type(layer).forward.__get__(layer), dynamic=True)
            layer.forward = layer._tteflash_compiled
        try:
            yield
        finally:
            for layer in layers:
                del layer.forward  # back to the class's forward

    def encode_query(self, inputs, **kw):
        return self.encode(inputs, role="query", **kw)

    def encode_document(self, inputs, **kw):
        return self.encode(inputs, role="document", **kw)

    @staticmethod
    def similarity(a, b) -> torch.Tensor:
        """Cosine similarity matrix between two sets of embeddings (arrays or tensors)."""
        a, b = (x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x)) for x in (a, b))
        return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T

    # ------------------------------------------------------------------ generation
    def _generate_cot(self, rows: list[Row], max_new_tokens: int | None = None) -> list[list[int]]:
        """Explicit CoT: greedy decoding after [prompt]<|cot|> with the backbone's own generate (KV cache)."""
        p = self.processor
        out = self._generate(rows, [p.cot_start], p.cot_end, max_new_tokens or self.config.max_cot_tokens,
                             suppress=p.never_generated)
        result = []
        for seq in out:
            seq = seq[: seq.index(p.cot_end)] if p.cot_end in seq else seq
            result.append(seq + [p.cot_end])
        return result

    def _generate(self, rows: list[Row], prefix: list[int], eos: int | list[int], max_new_tokens: int,
                  suppress: list[int] | None = None) -> list[list[int]]:
        """Greedy continuation of [prompt][prefix] per row (left-padded batch, the backbone's generate)."""
        p = self.processor
        seqs = [r.prompt + prefix for r in rows]
        L = max(map(len, seqs))
        ids = torch.full((len(rows), L), p.pad_token, dtype=torch.long)
        types = torch.zeros_like(ids)
        attn = torch.zeros_like(ids)
        for b, (s, r) in enumerate(zip(seqs, rows)):  # left padding for batched generation
            ids[b, L - len(s):] = torch.tensor(s)
            types[b, L - len(s): L - len(prefix)] = torch.tensor(r.prompt_types)
            attn[b, L - len(s):] = 1
        kw = dict(input_ids=ids, attention_mask=attn)
        if "mm_token_type_ids" in self._generate_params:
            kw["mm_token_type_ids"] = types
        for kind, pv, grid in ((1, "pixel_values", "image_grid_thw"), (2, "pixel_values_videos", "video_grid_thw")):
            items = [(x, thw) for r in rows for k, x, thw in r.pixels if k == kind]
            if items:
                kw[pv] = torch.cat([x for x, _ in items]).to(self.dtype)
                kw[grid] = torch.tensor([thw for _, thw in items])
        kw = {k: v.to(self.device) for k, v in kw.items()}
        return self.vlm.generate(**kw, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=p.pad_token, suppress_tokens=suppress)[:, L:].tolist()

    @torch.inference_mode()
    def generate_text(self, inputs, max_new_tokens: int = 256, batch_size: int = 8) -> list[str]:
        """Greedy text after each raw prompt (no chat template): a local VLM as a CoT teacher."""
        items, _ = self._as_list(inputs)
        tok = self.backbone.tokenizer
        eos = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(t, int) and t >= 0 and t != tok.unk_token_id]
        out = []
        self.eval()
        for s in range(0, len(items), batch_size):
            rows = [self.processor.prompt_row(x, f"input {s + i}") for i, x in enumerate(items[s:s + batch_size])]
            for seq in self._generate(rows, [], eos or None, max_new_tokens):
                seq = seq[: min((seq.index(e) for e in eos if e in seq), default=len(seq))]
                out.append(tok.decode(seq, skip_special_tokens=True).strip())
        return out

    @torch.inference_mode()
    def generate_cot(self, inputs, batch_size: int = 32, max_new_tokens: int | None = None) -> list[str]:
        """Explicit CoT text for each query (the explicit-CoT method's first stage)."""
        items, _ = self._as_list(inputs)
        out = []
        for s in range(0, len(items), batch_size):
            rows = [self.processor.prompt_row(x, f"input {s + i}") for i, x in enumerate(items[s:s + batch_size])]
            out += [self._decode(ids) for ids in self._generate_cot(rows, max_new_tokens)]
        return out

    @torch.inference_mode()
    def decode_thoughts(self, inputs, think_tokens: int | None = None, max_new_tokens: int | None = None,
                        batch_size: int = 32) -> list[str]:
        """Greedy CoT decoded from [query][T_1..T_K] through the same masked path the CoT loss trains."""
        k = self.config.think_tokens if think_tokens is None else think_tokens
        if self.config.explicit_cot or k == 0:
            raise ValueError("decode_thoughts needs a model with think tokens (think_tokens > 0)")
        items, _ = self._as_list(inputs)
        n = max_new_tokens or self.config.max_cot_tokens
        self.eval()
        out = []
        for s in range(0, len(items), batch_size):
            base = [self.processor.prompt_row(x, f"input {s + i}") for i, x in enumerate(items[s:s + batch_size])]
            gen = [[] for _ in base]
            done = [False] * len(base)
            for _ in range(n):
                rows = [Row(r.prompt, r.prompt_types, r.pixels, think=k, branch_cot=g, embed=False) for r, g in zip(base, gen)]
                batch = self.make_batch(rows)
                h = self._backbone_pass(batch)[0]
                logits = self.vlm.lm_head(h[torch.arange(len(rows)), batch.last_index])
                logits[:, self.processor.never_generated] = float("-inf")
                nxt = logits.argmax(-1).tolist()
                for i, t in enumerate(nxt):
                    if not done[i]:
                        gen[i].append(t)
                        done[i] = t == self.processor.cot_end
                if all(done):
                    break
            out += [self._decode(g) for g in gen]
        return out

    def _decode(self, ids: list[int]) -> str:
        end = self.processor.cot_end
        ids = ids[: ids.index(end)] if end in ids else ids
        return self.backbone.tokenizer.decode(ids, skip_special_tokens=True).strip()
