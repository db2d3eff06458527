"""Pinning pretrained weights: local folders and hub snapshots (a hub cache laid out offline)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pecn_ml.models.weights import resolve_weights, weight_files, weights_sha256
from pecn_ml.utils.files import sha256_file, sha256_json

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_repo(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The HF cache layout of one commit: blobs named by sha256, snapshot files linking to them."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    for rel, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snap


def test_local_folder_is_hashed_in_place(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"unet")
    (tmp_path / "vae.bin").write_bytes(b"vae")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.safetensors").write_bytes(b"temp")       # a temp folder: ignored
    r = resolve_weights(str(tmp_path))
    assert r.path == tmp_path and r.revision is None
    assert r.files == {"unet/diffusion_pytorch_model.safetensors": hashlib.sha256(b"unet").hexdigest(),
                       "vae.bin": hashlib.sha256(b"vae").hexdigest()}
    assert r.weights_sha256 == weights_sha256(tmp_path) == sha256_json(r.files)
    (tmp_path / "vae.bin").write_bytes(b"changed")
    assert weights_sha256(tmp_path) != r.weights_sha256


def test_missing_folder_or_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weight files"):
        resolve_weights(str(tmp_path))


def test_hub_name_resolves_to_a_commit_snapshot_offline(tmp_path):
    snap = _fake_hub_repo(tmp_path / "hub", "org/model", {
        "model_index.json": b"{}", "unet/config.json": b"{}",
        "unet/diffusion_pytorch_model.safetensors": b"weights-of-the-unet"})
    r = resolve_weights("org/model", local_files_only=True, cache_dir=str(tmp_path / "hub"))
    assert r.path == snap and r.revision == COMMIT
    # the sha comes from the blob name (no re-hashing of multi-GB files) and equals the content's
    assert r.files == {"unet/diffusion_pytorch_model.safetensors":
                       sha256_file(snap / "unet" / "diffusion_pytorch_model.safetensors")}
    assert weight_files(snap) == r.files


def test_hub_repo_not_in_cache_names_the_repo(tmp_path):
    with pytest.raises(FileNotFoundError, match="org/absent@v1"):
        resolve_weights("org/absent", "v1", local_files_only=True, cache_dir=str(tmp_path))


def test_hub_component_without_weights_is_refused(tmp_path):
    _fake_hub_repo(tmp_path / "hub", "org/empty", {"model_index.json": b"{}", "unet/config.json": b"{}"})
    with pytest.raises(FileNotFoundError, match=r"no weights for \['unet'\]"):
        resolve_weights("org/empty", local_files_only=True, cache_dir=str(tmp_path / "hub"))
