"""Atomic writes: a failure part-way leaves the previous file or directory whole, and no temporary behind."""
import pytest

from tteflash.files import atomic_dir, write_atomic


def test_write_atomic_replaces_the_file_in_one_step(tmp_path):
    path = tmp_path / "r.json"
    write_atomic(path, "old")
    write_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_dir_keeps_the_old_directory_when_the_writer_fails(tmp_path):
    model = tmp_path / "model"
    with atomic_dir(model) as tmp:
        open(f"{tmp}/weights", "w").write("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(model) as tmp:
            open(f"{tmp}/weights", "w").write("half of v2")
            raise RuntimeError("killed while saving")
    assert (model / "weights").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_dir(model) as tmp:
        open(f"{tmp}/other", "w").write("v3")
    assert sorted(p.name for p in model.iterdir()) == ["other"]  # replaced whole, not merged
