"""Checkpoint fingerprints count pretrained weights by their sha, not by their folder: a moved
project resumes its checkpoints, other weights in the same folder do not. (The InstructPix2Pix
resume after a move is in test_pix2pix_training.py, beside its fake frame cache.)"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from pecn_ml.models.pacnet import PacNetConfig
from pecn_ml.models.tiny import build_tiny_models
from pecn_ml.models.weights import weights_identity, weights_sha256
from pecn_ml.training import pix2pix as p2p
from pecn_ml.training import pacnet as pac
from pecn_test_support.moving_squares import moving_square_dataset


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")


def _weights(folder, payload: bytes):
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(payload)
    (folder / "unet" / "config.json").write_text("{}")
    return folder


def test_weights_identity_is_the_sha_of_a_folder_and_the_name_of_a_hub_id(tmp_path):
    a = _weights(tmp_path / "a", b"weights")
    b = _weights(tmp_path / "elsewhere" / "b", b"weights")
    c = _weights(tmp_path / "c", b"other weights")
    assert weights_identity(a) == weights_identity(str(b)) == f"sha256:{weights_sha256(a)}"
    assert weights_identity(c) != weights_identity(a)
    assert weights_identity("timbrooks/instruct-pix2pix") == "timbrooks/instruct-pix2pix"


def test_pix2pix_fingerprint_names_weights_not_folders(tmp_path):
    pairs = SimpleNamespace(video_ids=["1", "2"], prompts=["a", "b"], input_idx=20, target_idx=21)
    cfg = p2p.Pix2PixTrainConfig()
    a = _weights(tmp_path / "project" / "pix2pix_base", b"weights")
    moved = shutil.copytree(a, tmp_path / "moved" / "pix2pix_base")
    other = _weights(tmp_path / "other", b"other weights")
    fp = p2p._fingerprint(cfg, str(a), pairs, 10)
    assert p2p._fingerprint(cfg, str(moved), pairs, 10) == fp
    assert str(tmp_path) not in json.dumps(fp)
    assert p2p._fingerprint(cfg, str(other), pairs, 10)["pretrained"] != fp["pretrained"]


def test_pacnet_fingerprint_names_weights_not_folders(tiny, tmp_path):
    moved = shutil.copytree(tiny.resnet.parent, tmp_path / "moved")
    cfg = PacNetConfig.tiny(tiny.resnet, tiny.clip_text)
    cfg_moved = PacNetConfig.tiny(moved / tiny.resnet.name, moved / tiny.clip_text.name)
    train_cfg = pac.PacNetTrainConfig(epochs=1, cpu=True)
    train, val = [{"id": "1"}], [{"id": "2"}]
    fp = pac._fingerprint(cfg, train_cfg, train, val)
    assert pac._fingerprint(cfg_moved, train_cfg, train, val) == fp
    assert str(tiny.resnet.parent) not in json.dumps(fp)
    # other weights (the pix2pix UNet's folder stands in for another ResNet)
    other = PacNetConfig.tiny(tiny.pix2pix, tiny.clip_text)
    assert pac._fingerprint(other, train_cfg, train, val) != fp


def test_pacnet_resumes_after_the_pretrained_folders_moved(tiny, tmp_path):
    cache, entries = moving_square_dataset(6, size=24, min_len=12, max_len=20, seed=3)
    train, val = entries[:4], entries[4:]
    cfg = PacNetConfig.tiny(tiny.resnet, tiny.clip_text, hidden_dim=32, num_frames=4, heads=4)
    tcfg = pac.PacNetTrainConfig(epochs=2, batch_size=4, lr=1e-3, cpu=True, seed=7, val_seed=1)

    def crash_after_epoch_1(epoch, _row):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        pac.train_pacnet(cfg, tcfg, cache, train, val, tmp_path / "run", on_epoch_end=crash_after_epoch_1)
    moved = shutil.copytree(tiny.resnet.parent, tmp_path / "moved")
    cfg_moved = PacNetConfig.tiny(moved / tiny.resnet.name, moved / tiny.clip_text.name,
                                  hidden_dim=32, num_frames=4, heads=4)
    res = pac.train_pacnet(cfg_moved, tcfg, cache, train, val, tmp_path / "run")  # resume=True
    assert res.resumed_from_epoch == 1 and res.epochs_run == 2
    saved = json.loads((tmp_path / "run" / "last" / "config.json").read_text())["config"]
    assert saved["resnet_name"] == str(moved / tiny.resnet.name)
