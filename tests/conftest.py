"""Shared fixtures: one tiny tokenizer and tiny Qwen2-VL backbone per session, a few images and a video.

The shared backbone is read-only for tests: anything that trains or changes weights builds its own
with `fresh_backbone` (cheap at this size) so test order never matters.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tteflash.backbone import build_tiny_backbone, train_tiny_tokenizer
from tteflash.config import TTEFlashConfig
from tteflash.data import bench
from tteflash.model import TTEFlashModel

# Tiny matmuls gain nothing from threads, and on a shared 2-core machine OpenMP contention makes
# every linear ~100x slower: run single-threaded.
torch.set_num_threads(1)

TINY = dict(hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128, vision_depth=1, vision_dim=32)
MAX_THINK = 32  # the wrapper registers 32 think tokens; the tokenizer already has them: no resize, no RNG


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def tokenizer():
    return train_tiny_tokenizer(bench.corpus_texts(n_per_task=4, n_per_kind=4), vocab_size=400,
                                max_think_tokens=MAX_THINK)


def _backbone(tokenizer, seed: int = 0):
    return build_tiny_backbone(tokenizer, seed=seed, **TINY)


@pytest.fixture(scope="session")
def fresh_backbone(tokenizer):
    """Factory for a private backbone (training, weight edits)."""
    return lambda seed=0: _backbone(tokenizer, seed)


@pytest.fixture(scope="session")
def seeded_model(fresh_backbone):
    """Factory for training tests: seeded_model(seed) is a new K=4 model whose initial weights depend only on
    the seed, so two runs (plain vs GradCache, one process vs two) start from the same point."""
    initial = {}

    def make(seed: int) -> TTEFlashModel:
        if seed not in initial:
            m = TTEFlashModel(fresh_backbone(seed=seed), TTEFlashConfig(think_tokens=4))
            initial[seed] = {k: v.clone() for k, v in m.state_dict().items()}
        m = TTEFlashModel(fresh_backbone(seed=0), TTEFlashConfig(think_tokens=4))
        m.load_state_dict(initial[seed])
        return m
    return make


@pytest.fixture(scope="session")
def backbone(tokenizer):
    bb = _backbone(tokenizer)
    bb.model.eval()
    return bb


@pytest.fixture(scope="session")
def make_model(backbone):
    """A TTEFlashModel with the given config over the shared (read-only) backbone."""
    def make(**cfg) -> TTEFlashModel:
        m = TTEFlashModel(backbone, TTEFlashConfig(**cfg))
        m.eval()
        return m
    return make


@pytest.fixture(scope="session")
def model8(make_model):
    return make_model(think_tokens=8)


@pytest.fixture(scope="session")
def model0(make_model):
    return make_model(think_tokens=0)


@pytest.fixture(scope="session")
def img84():
    return random_image(84, 84, 1)


@pytest.fixture(scope="session")
def img56():
    return random_image(56, 56, 2)


@pytest.fixture(scope="session")
def img100x70():
    return random_image(100, 70, 3)


@pytest.fixture(scope="session")
def video4():
    return [random_image(56, 56, 10 + i) for i in range(4)]


@pytest.fixture(scope="session")
def train_examples():
    """Eight fixed bench examples covering eight tasks (image, text, video queries and targets)."""
    return [bench.make_example(task, "train", i) for i, task in enumerate(bench.TASK_NAMES[:8])]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A base checkpoint from two steps of each `make base` stage at TINY size (demo and study tests)."""
    from tteflash.train.base import build_base

    out = tmp_path_factory.mktemp("base") / "base"
    build_base(str(out), steps=2, reading_steps=2, reasoning_steps=2, answering_steps=2, progress=False, **TINY)
    return str(out)


@pytest.fixture
def no_grad_leak(backbone):
    """Clear gradients a test leaves on the shared backbone."""
    yield
    backbone.model.zero_grad(set_to_none=True)
    backbone.model.eval()


@pytest.fixture(scope="session")
def mmeb_fixture(tmp_path_factory):
    """(annotations dir, data root, datasets cache) holding the MMEB-v2 fixtures (tests/mmeb_fixtures.py)."""
    import mmeb_fixtures
    root = tmp_path_factory.mktemp("mmeb")
    ann, data = mmeb_fixtures.build(root)
    return str(ann), str(data), str(root / "hf_cache")


@pytest.fixture
def one_forward_per_pass(monkeypatch):
    """Training steps without length groups: each query pass and the targets in one padded forward."""
    from tteflash.train import steps
    monkeypatch.setattr(steps, "length_groups", lambda lengths, max_groups=3: [list(range(len(lengths)))])
