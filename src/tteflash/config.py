"""Dataclass configs. Each field's docstring (the string literal under it) becomes its CLI help."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import types
import typing


def field_docs(cls) -> dict[str, str]:
    """Map field name -> the docstring literal written under it in the class body."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for prev, node in zip(body, body[1:]):
        if isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[prev.target.id] = str(node.value.value).strip()
    return docs


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One `--flag` per dataclass field, typed and documented from the class."""
    docs = {k: v.replace("%", "%%") for k, v in field_docs(cls).items()}  # argparse formats help with %
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=docs.get(f.name))
        else:
            # Optional[X] and X | None both give X
            base = typing.get_args(kind)[0] if typing.get_origin(kind) in (typing.Union, types.UnionType) else kind
            parser.add_argument(name, type=base, default=default, help=docs.get(f.name), dest=prefix + f.name)


def from_args(cls, args: argparse.Namespace, prefix: str = ""):
    return cls(**{f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)})


THINK_MODES = ("parallel", "recurrent")


@dataclasses.dataclass
class TTEFlashConfig:
    """Model-side settings, saved with a checkpoint as `tteflash_config.json`."""

    think_tokens: int = 2
    """K, the number of latent think tokens after the query; 0 is the no-think baseline. 2 won the design
    study (docs/results.md: 1.3-1.4 points above K=8 at 350 and 1,050 steps, +10.4 over no-think at 2,100);
    the benchmark's CoTs are 10-20 tokens, and longer reasoning may want more (the paper reports quality
    rising with K)."""
    think_mode: str = "parallel"
    """`parallel`: K learned think embeddings, one pass; `recurrent`: Coconut-style, each think input is the
    previous position's last hidden state (one KV cache: the prompt once, then K one-token steps)."""
    explicit_cot: bool = False
    """Explicit Think-Then-Embed: generate a CoT after the query, then embed [query][CoT][E]."""
    cot_sees_query: bool = False
    """Let the CoT branch attend to the query; off makes the think tokens an information bottleneck."""
    cot_sees_cot: bool = True
    """Let each CoT-branch token attend to the CoT tokens before it (teacher forcing). Off: each CoT token is
    predicted from the think tokens and its own input token alone, so every fact the CoT states, the answer
    included, must be held by the think tokens (under teacher forcing the branch can otherwise compute a
    sum from the gold digits it was fed, and the think tokens need not hold it)."""
    embed_layer: int = -1
    """Hidden-state index read at the embedding token (-1: last layer after the final norm)."""
    think_on_targets: bool = False
    """Also place think tokens on the target (document) side."""
    max_text_tokens: int = 512
    """Longer texts are truncated to this many tokens (or rejected when truncate_text is off)."""
    truncate_text: bool = True
    """Truncate over-long text instead of raising an InputError."""
    max_cot_tokens: int = 64
    """Longest CoT trained or generated, in tokens (explicit CoT and decoded thoughts)."""
    max_video_frames: int = 8
    """Videos with more frames are sampled uniformly down to this many (MMEB uses 8)."""

    def __post_init__(self):
        if self.think_tokens < 0:
            raise ValueError(f"think_tokens must be >= 0, got {self.think_tokens}")
        if self.think_mode not in THINK_MODES:
            raise ValueError(f"think_mode must be 'parallel' or 'recurrent', got {self.think_mode!r}")
        if self.explicit_cot and self.think_tokens:
            raise ValueError("explicit_cot writes its CoT in text: set think_tokens=0")

    @property
    def method(self) -> str:
        return "explicit_cot" if self.explicit_cot else ("tte_flash" if self.think_tokens else "no_think")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "TTEFlashConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
