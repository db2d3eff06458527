"""The training scaffold's pruning of a finished run's training state (both layouts)."""

from __future__ import annotations

import json
import os
import time

import pytest

from pecn_ml.training.scaffold import prune_training_state, resume_files


# --- pruning: InstructPix2Pix layout -------------------------------------------------------------

def _file(path, size=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def _pix2pix_checkpoint(out, step, mtime):
    ck = out / "checkpoints" / f"checkpoint-{step}"
    _file(ck / "unet" / "diffusion_pytorch_model.safetensors", 1000)
    _file(ck / "optimizer.bin", 2000)
    (ck / "training_state.json").write_text(json.dumps({"global_step": step}))
    os.utime(ck / "training_state.json", (mtime, mtime))
    return ck


FINAL_LAYOUTS = {"full": ("model_index.json", "unet/diffusion_pytorch_model.safetensors",
                          "vae/diffusion_pytorch_model.safetensors"),
                 "light": ("base.json", "unet/diffusion_pytorch_model.safetensors")}   # UNet + base reference


def _final_pipeline(out, mtime, layout="full"):
    for rel in FINAL_LAYOUTS[layout]:
        os.utime(_file(out / "model" / rel), (mtime, mtime))


@pytest.mark.parametrize("layout", sorted(FINAL_LAYOUTS))
def test_pix2pix_checkpoints_go_after_the_final_pipeline_and_nothing_else(tmp_path, layout):
    now = time.time()
    out = tmp_path / "instruct_pix2pix_224"
    old = [_pix2pix_checkpoint(out, s, now - 100 + s) for s in (2, 4)]
    _final_pipeline(out, now, layout)
    _file(out / "validation" / "final.png")
    _file(out / "latent_cache" / "latents.npy")
    logged = []
    pruned = prune_training_state(out, log=logged.append)
    assert set(pruned.removed) == set(old) and pruned.freed_bytes == 2 * (1000 + 2000 + len(json.dumps({"global_step": 2})))
    assert not (out / "checkpoints" / "checkpoint-2").exists()
    for kept in (f"model/{FINAL_LAYOUTS[layout][0]}", "model/unet/diffusion_pytorch_model.safetensors",
                 "validation/final.png", "latent_cache/latents.npy"):
        assert (out / kept).is_file()
    assert logged and "pruned 2" in logged[0]
    assert pruned.metadata()["pruned_bytes"] == pruned.freed_bytes


def test_pix2pix_unfinished_runs_keep_their_checkpoints(tmp_path):
    now = time.time()
    out = tmp_path / "run"
    ck = _pix2pix_checkpoint(out, 2, now)
    assert prune_training_state(out).removed == () and ck.exists()  # no final pipeline yet
    _final_pipeline(out, now - 50)            # a final pipeline of an earlier run ...
    newer = _pix2pix_checkpoint(out, 4, now)  # ... and checkpoints of a run in progress
    pruned = prune_training_state(out)
    assert pruned.removed == () and newer.exists() and "newer than" in pruned.kept_reason


# --- pruning: PAC-Net, with the real trainer -----------------------------------------------------

@pytest.fixture(scope="module")
def pacnet_run(tmp_path_factory):
    from pecn_ml.models.pacnet import PacNetConfig
    from pecn_ml.models.tiny import build_tiny_models
    from pecn_ml.training.pacnet import PacNetTrainConfig, train_pacnet
    from pecn_test_support.moving_squares import moving_square_dataset

    tiny = build_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")
    cache, entries = moving_square_dataset(8, size=24, min_len=12, max_len=20, seed=3)
    model = PacNetConfig.tiny(tiny.resnet, tiny.clip_text, hidden_dim=32, num_frames=4, heads=4)
    train = PacNetTrainConfig(epochs=2, batch_size=4, lr=1e-3, cpu=True, seed=7, val_seed=1)

    def run(out, **kw):
        return train_pacnet(model, train, cache, entries[:6], entries[6:], out, **kw)

    return run


def test_pacnet_keep_final_drops_only_resume_files_and_the_run_stays_finished(pacnet_run, tmp_path):
    out = tmp_path / "pacnet_regression"
    first = pacnet_run(out)
    resume = {p.name for p in resume_files(out / "last")}
    assert {"optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"} <= resume
    pruned = prune_training_state(out)
    assert {p.name for p in pruned.removed} == resume and pruned.freed_bytes > 0
    assert (out / "last" / "training_state.json").is_file() and (out / "best" / "model.safetensors").is_file()
    assert (out / "last" / "model.safetensors").is_file()
    logged = []
    again = pacnet_run(out, resume="auto", log=logged.append)  # recognised as finished: no training
    assert any("nothing to do" in line for line in logged)
    assert again.weights_sha256 == first.weights_sha256 and again.val_mae == first.val_mae
    assert prune_training_state(out).removed == ()  # nothing left to prune


def test_pacnet_without_keep_final_removes_last_and_never_best(pacnet_run, tmp_path):
    out = tmp_path / "pacnet_classification"
    pacnet_run(out)
    pruned = prune_training_state(out, keep_final=False)
    assert pruned.removed == (out / "last",) and not (out / "last").exists()
    assert (out / "best" / "model.safetensors").is_file() and (out / "logs").is_dir()


def test_pacnet_unfinished_run_is_kept(tmp_path):
    last = tmp_path / "last"
    _file(last / "optimizer.bin")
    (last / "training_state.json").write_text(json.dumps({"epoch": 1, "finished": False, "fingerprint": {}}))
    (tmp_path / "best").mkdir()
    pruned = prune_training_state(tmp_path, keep_final=False)
    assert pruned.removed == () and "not finished" in pruned.kept_reason
    assert (last / "optimizer.bin").exists()
