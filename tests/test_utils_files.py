"""Atomic writes: a folder or file replaces its target only when complete; temp folders of
killed writers are removed, those of running writers never. Folder manifests: every file a
loader reads is listed, and a check names the file that changed, is missing or was added."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pecn_ml.utils.files import (ManifestMismatch, atomic_dir, check_manifest, clean_stale_tmp_dirs,
                                 folder_manifest, manifest_difference, manifest_sha256, sha256_file)

REPO = Path(__file__).resolve().parents[1]


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


# A writer in another process: enters atomic_dir, says so, then either dies there (kill -9) or
# waits for the word to finish its write.
WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from pecn_ml.utils.files import atomic_dir
    target, mode = Path(sys.argv[1]), sys.argv[2]
    with atomic_dir(target) as tmp:
        (tmp / "by.txt").write_text(mode)
        print(tmp.name, flush=True)
        if mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.readline()
""")


def _writer(target, mode):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_temp_folder_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model"
    dead = _writer(target, "die")
    left = dead.stdout.readline().strip()
    assert dead.wait(timeout=60) == -signal.SIGKILL
    assert left.startswith(".model.tmp-") and (tmp_path / left / "by.txt").is_file()
    with atomic_dir(target) as tmp:
        (tmp / "by.txt").write_text("next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (target / "by.txt").read_text() == "next"


def test_temp_folders_of_running_writers_are_kept(tmp_path):
    target = tmp_path / "model"
    other = _writer(target, "finish")          # another process, in the middle of its write
    try:
        theirs = tmp_path / other.stdout.readline().strip()
        with atomic_dir(target) as mine:        # this process, in the middle of its write
            with atomic_dir(target) as tmp:     # a third write (another thread, say) completes
                (tmp / "by.txt").write_text("third")
            assert mine.is_dir() and (theirs / "by.txt").is_file()
            (mine / "by.txt").write_text("mine")
        assert theirs.is_dir() and (target / "by.txt").read_text() == "mine"
        other.stdin.write("go\n")
        other.stdin.flush()
        assert other.wait(timeout=60) == 0
    finally:
        other.kill()
    assert (target / "by.txt").read_text() == "finish"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_unchecked_temp_folders_are_removed_only_when_old(tmp_path):
    target = tmp_path / "out"
    names = {"legacy_old": ".out.tmp-abc123", "legacy_new": ".out.tmp-def456",
             "foreign_old": ".out.tmp-0123abcd-17-99-xyz", "foreign_new": ".out.tmp-0123abcd-18-99-xyz",
             "unrelated": ".other.tmp-x"}
    for name in names.values():
        (tmp_path / name).mkdir()
    two_days_ago = time.time() - 2 * 86400
    for key in ("legacy_old", "foreign_old"):
        os.utime(tmp_path / names[key], (two_days_ago, two_days_ago))
    removed = clean_stale_tmp_dirs(target)
    assert sorted(p.name for p in removed) == sorted([names["legacy_old"], names["foreign_old"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("legacy_new", "foreign_new", "unrelated"))


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times need /proc")
def test_a_reused_pid_does_not_keep_a_dead_writers_folder(tmp_path):
    from pecn_ml.utils.files import owned_prefix
    from pecn_ml.utils.processes import host_tag

    alive = tmp_path / (owned_prefix(tmp_path / "out") + "a")
    reused = tmp_path / f".out.tmp-{host_tag()}-{os.getpid()}-1-b"   # this pid, an earlier process
    alive.mkdir()
    reused.mkdir()
    assert clean_stale_tmp_dirs(tmp_path / "out") == [reused]
    assert alive.is_dir()


def test_a_folder_manifest_lists_every_file_but_hidden_ones_and_model_cards(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    for rel in ("model_index.json", "unet/config.json", "unet/w.safetensors", "README.md", ".complete",
                ".cache/huggingface/x.lock", "notes.txt"):
        (tmp_path / rel).write_text(rel)
    files = folder_manifest(tmp_path)
    assert list(files) == ["model_index.json", "notes.txt", "unet/config.json", "unet/w.safetensors"]
    assert files["unet/config.json"] == sha256_file(tmp_path / "unet/config.json")
    (tmp_path / "card_only").mkdir()
    (tmp_path / "card_only" / "README.md").write_text("# card")
    with pytest.raises(FileNotFoundError, match="no files to hash"):
        folder_manifest(tmp_path / "card_only")
    with pytest.raises(FileNotFoundError, match="gone or not a folder"):
        folder_manifest(tmp_path / "nowhere")


def test_a_symlink_into_a_content_addressed_blob_is_taken_by_its_name(tmp_path):
    blob = tmp_path / "blobs" / ("a" * 64)        # the HF cache: the blob's name is its sha256
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "model.safetensors").symlink_to(blob)
    assert folder_manifest(tmp_path / "snapshot") == {"model.safetensors": "a" * 64}


def test_manifest_difference_names_the_first_changed_missing_or_added_file():
    recorded = {"a.json": "1" * 64, "b/w.safetensors": "2" * 64}
    assert manifest_difference(recorded, dict(recorded)) is None
    assert manifest_difference(recorded, {**recorded, "b/w.safetensors": "3" * 64}) == \
        f"b/w.safetensors changed (sha256 {'3' * 12} != {'2' * 12})"
    assert manifest_difference(recorded, {"b/w.safetensors": "2" * 64}) == "a.json is missing"
    assert manifest_difference(recorded, {**recorded, "b/extra.bin": "4" * 64}) == \
        "b/extra.bin was added (not in the recorded manifest)"


def test_check_manifest_passes_an_unchanged_folder_and_names_what_changed(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    (tmp_path / "model_index.json").write_text("{}")
    files = folder_manifest(tmp_path)
    sha = manifest_sha256(files)
    assert check_manifest(tmp_path, sha, files) == files
    (tmp_path / "vae" / "config.json").write_text('{"scaling_factor": 1.0}')
    with pytest.raises(ManifestMismatch, match=r"vae/config.json changed .*the folder changed since it was recorded"):
        check_manifest(tmp_path, sha, files)
    with pytest.raises(ManifestMismatch, match="no recorded file list matches that sha"):
        check_manifest(tmp_path, sha, {})        # without the manifest the file cannot be named
