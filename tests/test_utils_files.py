"""Atomic writes: a folder or file replaces its target only when complete."""

import pytest

from pecn_ml.utils.files import atomic_dir, clean_stale_tmp_dirs


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folder left


def test_stale_temp_folders_are_cleaned(tmp_path):
    target = tmp_path / "out"
    stale = tmp_path / ".out.tmp-abc123"   # what a process killed before its rename leaves
    stale.mkdir()
    (tmp_path / ".other.tmp-x").mkdir()
    clean_stale_tmp_dirs(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-x"]
