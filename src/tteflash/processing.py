"""Inputs (text, image, video) -> token ids and pixels; rows -> one padded batch with the attention layout.

The think-token layout lives in `build_batch`: a row is

    [prompt] [<|cot|> inline CoT <|/cot|>]? [T_1 .. T_K] [E] [E_k ...]? [branch CoT <|/cot|>]?

- `E` sees everything before it (prompt, inline CoT, think tokens).
- The branch CoT (TTE-Flash's CoT loss) sees the think tokens (the first `cot_think` of them), the
  prompt only when `cot_sees_query`, its own earlier tokens unless `cot_sees_cot` is off, and never `E`;
  its positions continue from the last think token it reads as if `E` were absent, so decoding thoughts
  from `[prompt][T_1..T_k]` at inference matches training.
- Nested budgets: a budget token `E_k` is E as it would be read with k think tokens: it sees the prompt
  and T_1..T_k only, at the position right after T_k. So one pass trains the embedding at every budget,
  and `[prompt][T_1..T_k][E]` at inference computes exactly `E_k`.
- The inline CoT (explicit Think-Then-Embed) is ordinary causal text between the prompt and `E`.
"""
from __future__ import annotations

import inspect
import math
import os
import pathlib
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .backbone import COT_END_TOKEN, COT_START_TOKEN, EMBED_TOKEN, think_token

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values used by transformers


class InputError(ValueError):
    """An input the model cannot encode; the message names the input and the problem."""


# ----------------------------------------------------------------------------- pixels
def to_pil(value, name: str) -> Image.Image:
    """A path, PIL image or array (HxW, HxWx3/4; uint8, or float in [0, 1]) -> RGB PIL image."""
    if isinstance(value, (str, os.PathLike)):
        path = pathlib.Path(value)
        if not path.is_file():
            raise InputError(f"{name}: image file not found: {str(path)!r}")
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{name}: cannot read image file {str(path)!r} ({type(e).__name__}: {e})") from None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (np.ndarray, torch.Tensor)):
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or 0 in arr.shape:
            raise InputError(f"{name}: image array must have shape HxW or HxWxC with C in (1, 3, 4), got {arr.shape}")
        if arr.dtype != np.uint8:
            if not np.isfinite(arr).all():
                raise InputError(f"{name}: image array holds NaN or infinite values")
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8) if arr.max() <= 1.0 else np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        return Image.fromarray(arr).convert("RGB")
    raise InputError(f"{name}: unsupported image type {type(value).__name__} (use a path, PIL image or array)")


def _image_size(value) -> tuple[int, int]:
    """(width, height) of an image input without decoding its pixels."""
    if isinstance(value, (str, os.PathLike)):
        with Image.open(value) as img:  # lazy: reads the header only
            return img.size
    if isinstance(value, Image.Image):
        return value.size
    shape = value.shape
    return shape[1], shape[0]


@dataclass
class VisionSpec:
    """What the backbone's image processor prescribes, read once."""
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    std: tuple = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_image_processor(cls, ip) -> "VisionSpec":
        size = getattr(ip, "size", None) or {}
        get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        return cls(patch_size=ip.patch_size, temporal_patch_size=ip.temporal_patch_size, merge_size=ip.merge_size,
                   min_pixels=get("shortest_edge") or getattr(ip, "min_pixels", None) or cls.min_pixels,
                   max_pixels=get("longest_edge") or getattr(ip, "max_pixels", None) or cls.max_pixels,
                   mean=tuple(ip.image_mean), std=tuple(ip.image_std))

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Qwen-VL's smart resize: sides multiple of patch*merge, pixel count within [min, max]."""
        f = self.patch_size * self.merge_size
        if max(height, width) / min(height, width) > 200:
            raise InputError(f"aspect ratio of {width}x{height} is above 200")
        h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
        if h * w > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            h, w = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
        elif h * w < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
        return h, w

    def merged_tokens(self, height: int, width: int, frames: int = 1) -> int:
        """Visual tokens the language model sees for `frames` frames of this size (after the 2x2 merge)."""
        h, w = self.target_size(height, width)
        t = -(-frames // self.temporal_patch_size)
        return t * (h // self.patch_size // self.merge_size) * (w // self.patch_size // self.merge_size)

    def patchify(self, frames: list[Image.Image]) -> tuple[torch.Tensor, list[int]]:
        """Frames of one image (1) or video (T) -> (patches, [t, h, w]) exactly as the image processor lays them."""
        h, w = self.target_size(frames[0].height, frames[0].width)
        arrs = [np.asarray(f if f.size == (w, h) else f.resize((w, h), Image.BICUBIC), dtype=np.float32) for f in frames]
        x = (np.stack(arrs) / 255.0 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        x = x.transpose(0, 3, 1, 2)  # T, C, H, W
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if x.shape[0] % tp:  # repeat the last frame, as the upstream processors do
            x = np.concatenate([x, np.repeat(x[-1:], tp - x.shape[0] % tp, axis=0)])
        t, c = x.shape[0] // tp, x.shape[1]
        gh, gw = h // p, w // p
        x = x.reshape(t, tp, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return torch.from_numpy(np.ascontiguousarray(x.reshape(t * gh * gw, c * tp * p * p))), [t, gh, gw]


# ----------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One sequence to encode. Lists of token ids; vision pixels in prompt order."""
    prompt: list[int]
    prompt_types: list[int]
    pixels: list[tuple[int, torch.Tensor, list[int]]] = field(default_factory=list)  # (IMAGE|VIDEO, patches, thw)
    think: int = 0
    inline_cot: list[int] | None = None   # explicit CoT (ends with <|/cot|>), trained with NLL, seen by E
    branch_cot: list[int] | None = None   # TTE-Flash CoT (ends with <|/cot|>), trained with NLL, after E
    embed: bool = True                    # append E (False when decoding thoughts)
    budgets: tuple[int, ...] = ()         # more E tokens after E, one per budget k < think, each reading T_1..T_k
    cot_think: int | None = None          # the branch CoT reads T_1..T_cot_think (None: every think token)

    def __len__(self) -> int:
        """Tokens the row takes in a batch (build_batch's layout)."""
        inline = 0 if self.inline_cot is None else len(self.inline_cot) + 1  # + <|cot|>
        return (len(self.prompt) + inline + self.think + int(self.embed) + len(self.budgets)
                + len(self.branch_cot or ()))


@dataclass
class Batch:
    input_ids: torch.Tensor          # (B, L)
    mm_token_type_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor     # (B, 1, L, L) additive float mask
    position_ids: torch.Tensor       # (3, B, L)
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    pixel_values_videos: torch.Tensor | None
    video_grid_thw: torch.Tensor | None
    embed_index: torch.Tensor        # (B,) position of E (-1 where absent)
    budget_index: torch.Tensor       # (B, n) positions of the budget E tokens (Row.budgets; -1 where absent)
    last_index: torch.Tensor         # (B,) last real token (for decoding)
    cot_predict: torch.Tensor        # (N, 2) (row, position) whose logits predict a CoT token
    cot_labels: torch.Tensor         # (N,)
    cot_rows: torch.Tensor           # (N,) row of each CoT token (per-example averaging)
    think_mask: torch.Tensor         # (B, L) True at think-token positions
    padding_mask: torch.Tensor       # (B, L) 1 at real tokens
    causal: bool = False             # no CoT branch: the layout is plain causal with right padding

    def model_inputs(self) -> dict:
        # A plain causal layout goes to the backbone as a 2-D padding mask: the same attention as the 4-D
        # mask, but transformers can then use its fast kernels (SDPA is_causal, flash-attention 2).
        mask = self.padding_mask if self.causal else self.attention_mask
        out = dict(input_ids=self.input_ids, attention_mask=mask, position_ids=self.position_ids)
        for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    def to(self, device, non_blocking: bool = False) -> "Batch":
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device, non_blocking=non_blocking))
        return self

    def pin_memory(self) -> "Batch":
        """Page-locked host tensors, so that a later `.to(cuda, non_blocking=True)` overlaps with compute."""
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.pin_memory())
        return self


class Processor:
    """Turns user inputs into Rows and Rows into a Batch for one backbone."""

    def __init__(self, tokenizer, image_processor, model_config, *, max_text_tokens: int = 512,
                 min_video_frames: int = 2, max_video_frames: int = 32, truncate: bool = True):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.vision = VisionSpec.from_image_processor(image_processor)
        self.max_text_tokens, self.truncate = max_text_tokens, truncate
        self.min_video_frames, self.max_video_frames = max(min_video_frames, 1), max_video_frames
        ids = tokenizer.convert_tokens_to_ids
        self.image_token = model_config.image_token_id
        self.video_token = model_config.video_token_id
        self.vision_start, self.vision_end = model_config.vision_start_token_id, ids("<|vision_end|>")
        self.embed_token, self.cot_start, self.cot_end = ids(EMBED_TOKEN), ids(COT_START_TOKEN), ids(COT_END_TOKEN)
        self.pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Qwen3-VL lays a video out as per-frame blocks with timestamps: not supported yet.
        self.supports_video = not model_config.model_type.startswith("qwen3")
        self._think_ids: list[int] = []
        for i in range(1, 10_000):
            tid = ids(think_token(i))
            if tid is None or tid == tokenizer.unk_token_id:
                break
            self._think_ids.append(tid)
        # Tokens a generated CoT must not contain: vision placeholders, E, CoT start, think tokens.
        self.never_generated = [self.vision_start, self.vision_end, self.image_token, self.video_token,
                                self.embed_token, self.cot_start, *self._think_ids]

    # -- inputs
    @property
    def max_think_tokens(self) -> int:
        return len(self._think_ids)

    def normalise(self, item, name: str) -> dict:
        """Any supported input -> {"text", "image", "video"} (None where unused)."""
        if isinstance(item, str):
            item = {"text": item}
        elif isinstance(item, (pathlib.Path, Image.Image, np.ndarray, torch.Tensor)):
            item = {"image": item}
        elif not isinstance(item, dict):
            raise InputError(f"{name}: unsupported input type {type(item).__name__} "
                             "(use a string, an image (path, PIL, array) or a dict with text / image / video)")
        unknown = set(item) - {"text", "image", "video"}
        if unknown:
            raise InputError(f"{name}: unknown keys {sorted(unknown)} (allowed: text, image, video)")
        text, image, video = item.get("text"), item.get("image"), item.get("video")
        if text is not None and not isinstance(text, str):
            raise InputError(f"{name}: text must be a string, got {type(text).__name__}")
        if image is not None and video is not None:
            raise InputError(f"{name}: give either an image or a video, not both")
        if video is not None and not isinstance(video, (list, tuple)):
            raise InputError(f"{name}: video must be a list of frames, got {type(video).__name__}")
        if (text is None or not text.strip()) and image is None and video is None:
            raise InputError(f"{name}: empty input (no text, image or video)" if not text else f"{name}: text is blank")
        return {"text": text, "image": image, "video": video}

    def _tokenize(self, text: str) -> list[int]:
        # split_special_tokens: a literal "<|emb|>" or "<|image_pad|>" in user text stays plain text. Always
        # the same setting: the tokenizer flips a shared flag when it changes, a race for the prefetch threads.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def text_ids(self, text: str, name: str, limit: int | None = None) -> list[int]:
        ids = self._tokenize(text)
        limit = self.max_text_tokens if limit is None else limit
        if len(ids) > limit:
            if not self.truncate:
                raise InputError(f"{name}: text has {len(ids)} tokens, more than the limit of {limit}")
            ids = ids[:limit]  # documented: over-long text is cut to max_text_tokens
        return ids

    def prompt_row(self, item, name: str = "input") -> Row:
        item = self.normalise(item, name)
        ids: list[int] = []
        types: list[int] = []
        pixels = []
        if item["image"] is not None:
            patches, thw = self.vision.patchify([to_pil(item["image"], name)])
            pixels.append((IMAGE, patches, thw))
        elif item["video"] is not None:
            if not self.supports_video:
                raise NotImplementedError(f"{name}: video input is not supported yet for this backbone (Qwen3-VL)")
            frames = list(item["video"])
            if len(frames) < self.min_video_frames:
                raise InputError(f"{name}: video has {len(frames)} frame(s); at least {self.min_video_frames} are needed")
            if len(frames) > self.max_video_frames:  # uniform sampling, as MMEB does
                frames = [frames[i] for i in np.linspace(0, len(frames) - 1, self.max_video_frames).round().astype(int)]
            frames = [to_pil(f, f"{name} frame {i}") for i, f in enumerate(frames)]
            if len({f.size for f in frames}) > 1:
                raise InputError(f"{name}: video frames differ in size: {sorted({f.size for f in frames})}")
            patches, thw = self.vision.patchify(frames)
            pixels.append((VIDEO, patches, thw))
        for kind, _, thw in pixels:
            n = thw[0] * thw[1] * thw[2] // self.vision.merge_size ** 2
            ids += [self.vision_start] + [self.image_token if kind == IMAGE else self.video_token] * n + [self.vision_end]
            types += [TEXT] + [kind] * n + [TEXT]
        if item["text"]:
            t = self.text_ids(item["text"], name)
            ids += t
            types += [TEXT] * len(t)
        return Row(ids, types, pixels)

    def estimate_length(self, item) -> int:
        """A cheap guess of an input's prompt length in tokens, for sorting inputs into buckets of similar
        length: reads image sizes (file headers only), decodes no pixels, and never raises (a bad input
        gets 0 here and its proper InputError from `prompt_row`)."""
        try:
            item = self.normalise(item, "input")
            n = min(len(self._tokenize(item["text"])), self.max_text_tokens) if item["text"] else 0
            frames = [item["image"]] if item["image"] is not None else list(item["video"] or [])
            if frames:
                w, h = _image_size(frames[0])
                n += self.vision.merged_tokens(h, w, min(len(frames), self.max_video_frames)) + 2
            return n
        except Exception:  # noqa: BLE001 - a guess only; prompt_row reports the real problem
            return 0

    def cot_ids(self, cot: str, name: str = "cot", max_tokens: int = 128) -> list[int]:
        return self.text_ids(cot, name, max_tokens) + [self.cot_end]

    # -- batch
    def build_batch(self, rows: list[Row], *, cot_sees_query: bool = False, cot_sees_cot: bool = True,
                    dtype=torch.float32) -> Batch:
        # role: 0 prompt, 1 inline cot, 2 think, 3 E, 4 branch cot, 5 budget E
        seqs, types, roles, reads = [], [], [], []  # reads: the last think token a position may see (T_k: k)
        cot_predict, cot_labels, cot_rows, embed_index, budget_index = [], [], [], [], []
        think_pos = []  # per row, the column of each think token
        for b, r in enumerate(rows):
            if r.think > len(self._think_ids):
                raise ValueError(f"{r.think} think tokens requested; the tokenizer has {len(self._think_ids)}")
            if any(not 0 < k < r.think for k in r.budgets) or len(set(r.budgets)) < len(r.budgets):
                raise ValueError(f"budgets {r.budgets}: each must be a distinct number of think tokens in "
                                 f"1..{r.think - 1} (E reads all of them)")
            if r.cot_think is not None and not 0 < r.cot_think <= r.think:
                raise ValueError(f"the CoT branch cannot read {r.cot_think} of {r.think} think tokens")
            s, ro = list(r.prompt), [0] * len(r.prompt)
            if r.inline_cot is not None:
                s.append(self.cot_start); ro.append(1)
                for tok in r.inline_cot:  # predicted from the previous token
                    cot_predict.append((b, len(s) - 1)); cot_labels.append(tok); cot_rows.append(b)
                    s.append(tok); ro.append(1)
            think_pos.append(list(range(len(s), len(s) + r.think)))
            s += self._think_ids[: r.think]; ro += [2] * r.think
            embed_index.append(len(s) if r.embed else -1)
            if r.embed:
                s.append(self.embed_token); ro.append(3)
            rd = [r.think] * len(s)
            budget_index.append(list(range(len(s), len(s) + len(r.budgets))))
            s += [self.embed_token] * len(r.budgets); ro += [5] * len(r.budgets); rd += list(r.budgets)
            if r.branch_cot is not None:
                if r.think == 0:
                    raise ValueError("a branch CoT needs at least one think token to read from")
                last = think_pos[b][(r.cot_think or r.think) - 1]  # T_k predicts the first CoT token
                for i, tok in enumerate(r.branch_cot):
                    cot_predict.append((b, last if i == 0 else len(s) - 1)); cot_labels.append(tok); cot_rows.append(b)
                    s.append(tok); ro.append(4); rd.append(r.cot_think or r.think)
            seqs.append(s); roles.append(ro); reads.append(rd)
            types.append(r.prompt_types + [TEXT] * (len(s) - len(r.prompt)))
        B, L = len(rows), max(len(s) for s in seqs)
        input_ids = torch.full((B, L), self.pad_token, dtype=torch.long)
        type_ids = torch.zeros((B, L), dtype=torch.long)
        role = torch.full((B, L), -1, dtype=torch.long)
        think_no = torch.zeros((B, L), dtype=torch.long)  # k at T_k, 0 elsewhere
        reads_up_to = torch.zeros((B, L), dtype=torch.long)
        for b, s in enumerate(seqs):
            input_ids[b, : len(s)] = torch.tensor(s)
            type_ids[b, : len(s)] = torch.tensor(types[b])
            role[b, : len(s)] = torch.tensor(roles[b])
            reads_up_to[b, : len(s)] = torch.tensor(reads[b])
            think_no[b, think_pos[b]] = torch.arange(1, len(think_pos[b]) + 1)
        valid = role >= 0
        branch = role == 4
        after_think = branch | (role == 5)  # placed after E, positioned as if right after the think tokens they read
        # positions: M-RoPE over the main layout; a budget E_k and the branch continue from T_k's slot.
        position_ids = self._rope_positions(input_ids, type_ids, valid & ~after_think, rows)
        if after_think.any():
            think_col = torch.zeros((B, 1 + max(r.think for r in rows)), dtype=torch.long)  # [b, k]: T_k's column
            for b, cols in enumerate(think_pos):
                think_col[b, 1:1 + len(cols)] = torch.tensor(cols, dtype=torch.long)
            slot = position_ids.gather(2, think_col.gather(1, reads_up_to)[None].expand(3, -1, -1)) + 1
            step = (branch.long().cumsum(-1) - 1).clamp(min=0) * branch  # the branch's tokens follow one another
            position_ids = torch.where(after_think[None], slot + step[None], position_ids)
        # attention: causal among valid tokens; neither the branch nor a budget token sees E or a budget token
        # (each sees itself), nor think tokens past its budget; the branch sees the prompt only on request.
        allowed = torch.ones(L, L, dtype=torch.bool).tril()[None] & valid[:, None, :] & valid[:, :, None]
        hidden = (role == 3) | (role == 5)
        allowed &= ~(after_think[:, :, None] & hidden[:, None, :])
        allowed &= ~(think_no[:, None, :] > reads_up_to[:, :, None])
        hide_from_branch = torch.zeros_like(branch)
        if not cot_sees_query:  # the bottleneck: the CoT must be decodable from the think tokens alone
            hide_from_branch = hide_from_branch | (role == 0) | (role == 1)
        if not cot_sees_cot:  # each CoT token reads the think tokens and itself (re-allowed by the eye below)
            hide_from_branch = hide_from_branch | branch
        allowed &= ~(branch[:, :, None] & hide_from_branch[:, None, :])
        allowed |= torch.eye(L, dtype=torch.bool)[None]  # padding attends to itself: no all-masked rows
        mask = torch.zeros((B, 1, L, L), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)

        def cat(kind):
            items = [(p, thw) for r in rows for k, p, thw in r.pixels if k == kind]
            if not items:
                return None, None
            return torch.cat([p for p, _ in items]).to(dtype), torch.tensor([thw for _, thw in items])

        pv, ig = cat(IMAGE)
        pvv, vg = cat(VIDEO)
        cp = torch.tensor(cot_predict, dtype=torch.long).reshape(-1, 2)
        n_budgets = max(len(i) for i in budget_index)
        budgets = torch.tensor([i + [-1] * (n_budgets - len(i)) for i in budget_index], dtype=torch.long)
        budgets = budgets.reshape(B, n_budgets)  # (B, 0) when no row has budget tokens
        return Batch(input_ids, type_ids, mask, position_ids, pv, ig, pvv, vg, torch.tensor(embed_index), budgets,
                     torch.tensor([len(s) - 1 for s in seqs]), cp, torch.tensor(cot_labels, dtype=torch.long),
                     torch.tensor(cot_rows, dtype=torch.long), role == 2, valid.long(),
                     causal=not bool(after_think.any()))

    _rope_fn = None

    def bind_rope(self, fn) -> None:
        """The backbone's own `get_rope_index` (its signature differs across transformers versions)."""
        self._rope_fn = fn
        self._rope_params = set(inspect.signature(fn).parameters)

    def _rope_positions(self, input_ids, type_ids, valid, rows) -> torch.Tensor:
        grids = {k: [thw for r in rows for kind, _, thw in r.pixels if kind == k] for k in (IMAGE, VIDEO)}
        # Text-only rows: plain 1-D positions shared by the three M-RoPE axes.
        plain = (valid.long().cumsum(-1) - 1).clamp(min=0)[None].repeat(3, 1, 1)
        if not grids[IMAGE] and not grids[VIDEO]:
            return plain
        kwargs = dict(image_grid_thw=torch.tensor(grids[IMAGE]) if grids[IMAGE] else None,
                      video_grid_thw=torch.tensor(grids[VIDEO]) if grids[VIDEO] else None,
                      attention_mask=valid.long())
        if "mm_token_type_ids" in self._rope_params:
            kwargs["mm_token_type_ids"] = type_ids
        pos, _ = self._rope_fn(input_ids, **kwargs)
        return pos.clone()
