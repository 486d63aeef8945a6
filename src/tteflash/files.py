"""Atomic file writes: a killed job never leaves a half-written result, checkpoint or cache file."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to `path`; on success it replaces `path` in one step.

    suffix: kept at the end of the temporary name for writers that add or need one (np.save: ".npy")."""
    tmp = f"{os.fspath(path)}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield an empty temporary directory next to `path`; on success it replaces the directory `path`
    (a checkpoint is either the old one or the whole new one, never half of each). The old one is renamed
    aside before the new one moves in, so a kill in between leaves it whole at `path.old`."""
    path = os.fspath(path)
    tmp, old = f"{path}.tmp", f"{path}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)


def save_npy_atomic(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, array)
