"""PAC-Net training: cropping, layered LR, loss, overfitting, baseline, checkpoints, resume, the
selection split (disjoint from the evaluation videos), the test score and the model card."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pecn_ml.artifacts import ArtifactChanged, PacNetCheckpoint
from pecn_ml.models.pacnet import PacNet, PacNetConfig, load_pacnet
from pecn_ml.models.tiny import build_tiny_models
from pecn_ml.training.pacnet import (PacNetTrainConfig,
                                     layered_param_groups, mae_percent, pacnet_splits, progress_loss,
                                     train_pacnet, training_step)
from pecn_ml.training.scaffold import build_accelerator
from pecn_ml.training.pacnet_data import (ArrayFrameCache, PacNetCropDataset, SplitOverlap, crop_indices, crop_ratio,
                                          selection_counts)
from pecn_ml.utils.files import folder_manifest, manifest_sha256, sha256_file
from pecn_test_support.moving_squares import moving_square_dataset


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="module")
def squares():
    cache, entries = moving_square_dataset(10, size=24, min_len=12, max_len=20, seed=3)
    return cache, entries[:7], entries[7:]


def _config(tiny, **kw):
    base = dict(hidden_dim=32, num_frames=4, heads=4)
    base.update(kw)
    return PacNetConfig.tiny(tiny.resnet, tiny.clip_text, **base)


def _train_config(**kw):
    base = dict(epochs=3, batch_size=4, lr=1e-3, cpu=True, seed=7, val_seed=1)
    base.update(kw)
    return PacNetTrainConfig(**base)


# -- cropping --------------------------------------------------------------------------------


@pytest.mark.parametrize("total,ratio,num", [(40, 0.5, 20), (30, 0.1, 20), (64, 0.9, 20),
                                             (23, 0.37, 8), (5, 0.5, 20), (1, 0.3, 4)])
def test_crop_indices_within_crop_and_target(total, ratio, num):
    idx, target = crop_indices(total, ratio, num)
    end = int(np.floor(ratio * total))
    assert len(idx) == num and idx.dtype == np.int64
    assert idx[0] == 0 and idx[-1] == end and idx.max() <= end and np.all(np.diff(idx) >= 0)
    assert target == pytest.approx(end / total)
    if end + 1 >= num:
        assert len(set(idx.tolist())) == num  # no repeats when the crop is long enough
    else:
        assert set(idx.tolist()) == set(range(end + 1))  # every frame used, some repeated


def test_crop_indices_rejects_bad_input():
    for args in [(0, 0.5, 4), (10, 1.0, 4), (10, -0.1, 4), (10, 0.5, 0)]:
        with pytest.raises(ValueError, match="crop_indices"):
            crop_indices(*args)


def test_dataset_crops_per_epoch_and_fixed_validation(squares):
    cache, train, _ = squares
    ds = PacNetCropDataset(cache, train, 4, 0.1, 0.9, seed=5)
    r1 = [ds.ratio(i, epoch=1) for i in range(len(ds))]
    r2 = [ds.ratio(i, epoch=2) for i in range(len(ds))]
    assert r1 != r2 and all(0.1 <= r <= 0.9 for r in r1 + r2)
    # crops are keyed by video id, not by list position
    rev = PacNetCropDataset(cache, train[::-1], 4, 0.1, 0.9, seed=5)
    assert [rev.ratio(i, epoch=1) for i in range(len(rev))] == r1[::-1]
    val = PacNetCropDataset(cache, train, 4, 0.1, 0.9, seed=5, fixed=True)
    val.set_epoch(1)
    a = val.targets()
    val.set_epoch(9)
    assert np.array_equal(a, val.targets())
    item = ds[0]
    idx, target = ds.crop(0)
    assert item["frames"].shape == (4, 24, 24, 3) and item["frames"].dtype == torch.uint8
    assert item["target"].item() == pytest.approx(target)
    assert np.array_equal(item["frames"].numpy(), cache.frames(train[0]["id"], idx))
    assert item["text"] == train[0]["label"]
    with pytest.raises(ValueError, match="entry #0"):
        PacNetCropDataset(cache, [{"id": "x"}], 4)
    with pytest.raises(ValueError, match="has 0 frames"):
        PacNetCropDataset(ArrayFrameCache({"e": np.zeros((0, 4, 4, 3), np.uint8)}),
                          [{"id": "e", "label": "x"}], 4)


def test_loader_workers_give_the_same_batches(squares):
    cache, train, _ = squares
    ds = PacNetCropDataset(cache, train, 4, seed=5)
    ds.set_epoch(3)

    def batches(workers):
        g = torch.Generator().manual_seed(11)
        dl = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=True, generator=g,
                                         num_workers=workers)
        return [(b["video_id"], b["frames"], b["target"]) for b in dl]

    for (ia, fa, ta), (ib, fb, tb) in zip(batches(0), batches(2), strict=True):
        assert ia == ib and torch.equal(fa, fb) and torch.equal(ta, tb)


# -- optimisation pieces ---------------------------------------------------------------------


def test_layered_param_groups(tiny):
    model = PacNet(_config(tiny))
    groups = layered_param_groups(model, lr=5e-5, backbone_lr_mult=0.2, weight_decay=5e-5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(1e-5) and by_name["head"]["lr"] == 5e-5
    assert all(g["weight_decay"] == 5e-5 for g in groups)
    backbone = {id(p) for p in model.frame_encoder.backbone.parameters()} | \
        {id(p) for p in model.text_encoder.backbone.parameters()}
    assert {id(p) for p in by_name["backbone"]["params"]} == backbone
    head_ids = {id(p) for p in by_name["head"]["params"]}
    assert not head_ids & backbone
    assert id(model.head.weight) in head_ids and id(model.temporal.pos) in head_ids
    assert id(model.frame_encoder.proj.weight) in head_ids  # projection is new: full lr
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(model.parameters()))
    model.text_encoder.backbone.requires_grad_(False)
    frozen = layered_param_groups(model, 5e-5, 0.2, 5e-5)
    clip = {id(p) for p in model.text_encoder.backbone.parameters()}
    assert not clip & {id(p) for g in frozen for p in g["params"]}
    torch.optim.AdamW(frozen)  # valid optimizer groups


def test_progress_loss_both_heads(tiny):
    reg = PacNet(_config(tiny))
    out, target = torch.tensor([0.2, 0.9]), torch.tensor([0.25, 0.5])
    assert progress_loss(reg, out, target).item() == pytest.approx(
        F.smooth_l1_loss(out, target).item())
    cls = PacNet(_config(tiny, head="classification"))
    logits = torch.randn(2, 101)
    want = F.cross_entropy(logits, torch.tensor([50, 100]))  # round(100 * t)
    assert progress_loss(cls, logits, torch.tensor([0.504, 1.0])).item() == pytest.approx(want.item())
    assert mae_percent(np.array([0.1, 0.5]), np.array([0.2, 0.5])) == pytest.approx(5.0)


def test_overfits_a_tiny_batch(tiny, squares):
    cache, train, _ = squares
    torch.manual_seed(0)
    model = PacNet(_config(tiny))
    ds = PacNetCropDataset(cache, train[:4], 4, seed=0)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    acc = build_accelerator("no", True, print)
    opt = torch.optim.AdamW(layered_param_groups(model, 1e-3, 1.0, 0.0))
    model, opt = acc.prepare(model, opt)
    losses = [training_step(model, batch, opt, acc) for _ in range(40)]
    assert losses[-1] < 0.1 * losses[0], losses[::8]


# -- the loop ----------------------------------------------------------------------------------


def test_train_reports_baseline_and_writes_checkpoints(tiny, squares, tmp_path):
    cache, train, val = squares
    cfg, tcfg = _config(tiny), _train_config(epochs=2)
    lines = []
    res = train_pacnet(cfg, tcfg, cache, train, val, tmp_path, log=lines.append)
    # baseline = MAE of the mean training progress (all epochs' crops) on the fixed val crops
    tr = PacNetCropDataset(cache, train, 4, 0.1, 0.9, seed=tcfg.seed)
    mean = np.mean([tr.targets(ep) for ep in (1, 2)])
    vt = PacNetCropDataset(cache, val, 4, 0.1, 0.9, seed=tcfg.val_seed, fixed=True).targets()
    assert res.mean_train_progress == pytest.approx(mean)
    assert res.baseline_mae == pytest.approx(np.mean(np.abs(vt - mean)) * 100)
    assert 0.1 <= mean <= 0.9
    assert [h["epoch"] for h in res.history] == [1, 2] and res.epochs_run == 2
    assert all(set(h) >= {"epoch", "train_loss", "val_mae"} for h in res.history)
    assert res.val_mae == min(h["val_mae"] for h in res.history)
    assert res.history[res.best_epoch - 1]["val_mae"] == res.val_mae
    assert res.weights_sha256 == sha256_file(tmp_path / "best" / "model.safetensors")
    assert res.checkpoint_files == folder_manifest(tmp_path / "best")   # every file load_pacnet reads
    assert res.checkpoint_sha256 == manifest_sha256(res.checkpoint_files)
    assert {"model.safetensors", "config.json", "resnet/config.json", "clip_text/config.json"} <= set(res.checkpoint_files)
    assert any(p.startswith("tokenizer/") for p in res.checkpoint_files) and "README.md" not in res.checkpoint_files
    handle = PacNetCheckpoint.from_result(res, "regression", tmp_path, "run-1")
    assert handle.verify() is handle and handle.sha256 == res.checkpoint_sha256
    clip_config = tmp_path / "best" / "clip_text" / "config.json"
    original = clip_config.read_bytes()
    clip_config.write_text("{}")
    with pytest.raises(ArtifactChanged, match="clip_text/config.json changed"):
        handle.verify()
    clip_config.write_bytes(original)
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["epoch"] == res.best_epoch
    for name in ("model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl",
                 "random_states_0.pkl", "training_state.json", "config.json"):
        assert (tmp_path / "last" / name).is_file(), name   # the model files + accelerate's state
    assert not list((tmp_path / "best").rglob("*.bin")) and not list((tmp_path / "best").rglob("*.pkl"))
    assert list((tmp_path / "logs").glob("events.out.tfevents*"))
    assert any("epochs" in ln and "ETA" in ln for ln in lines)
    assert any("baseline" in ln for ln in lines)
    # best/ and last/ load as models; a finished run is not trained again
    assert load_pacnet(tmp_path / "best").config == cfg
    again = train_pacnet(cfg, tcfg, cache, train, val, tmp_path)
    assert again.resumed_from_epoch == 2 and again.weights_sha256 == res.weights_sha256
    # a different config must not silently resume
    with pytest.raises(ValueError, match="resume=False"):
        train_pacnet(cfg, _train_config(epochs=2, lr=2e-3), cache, train, val, tmp_path)
    # resume="auto" (what the Dagster asset passes) starts over instead: a changed run retrains
    other = train_pacnet(cfg, _train_config(epochs=2, lr=2e-3), cache, train, val, tmp_path,
                         resume="auto")
    assert other.resumed_from_epoch == 0 and other.weights_sha256 != res.weights_sha256


class _Crash(RuntimeError):
    pass


def test_resume_after_crash_equals_uninterrupted(tiny, squares, tmp_path):
    cache, train, val = squares
    cfg, tcfg = _config(tiny, dropout=0.1), _train_config(epochs=3)
    full = train_pacnet(cfg, tcfg, cache, train, val, tmp_path / "full")

    def crash(epoch, row):
        if epoch == 1:
            raise _Crash("killed after epoch 1")

    with pytest.raises(_Crash):
        train_pacnet(cfg, tcfg, cache, train, val, tmp_path / "crash", on_epoch_end=crash)
    state = json.loads((tmp_path / "crash" / "last" / "training_state.json").read_text())
    assert state["epoch"] == 1
    resumed = train_pacnet(cfg, tcfg, cache, train, val, tmp_path / "crash")
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 3
    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "crash" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_mae"] for h in full.history] == [h["val_mae"] for h in resumed.history]
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    assert resumed.weights_sha256 == full.weights_sha256
    # training changed the weights (the comparison above is not trivially true)
    start = PacNet(cfg).state_dict()
    assert not torch.equal(start["head.weight"], a["head.weight"])


def test_classification_training_path(tiny, squares, tmp_path):
    cache, train, val = squares
    cfg = _config(tiny, head="classification")
    res = train_pacnet(cfg, _train_config(epochs=1, freeze_text_encoder=True), cache,
                       train, val, tmp_path)
    assert len(res.history) == 1 and np.isfinite(res.history[0]["train_loss"])
    assert 0 <= res.val_mae <= 100 and res.history[0]["train_loss"] > 0
    model = load_pacnet(res.best_dir)
    assert model.config.head == "classification" and model.head.out_features == 101
    # the frozen text encoder did not move
    fresh = PacNet(cfg)
    for k, v in fresh.text_encoder.backbone.state_dict().items():
        assert torch.equal(v, model.text_encoder.backbone.state_dict()[k]), k


def test_bf16_mixed_precision_path(tiny, squares, tmp_path):
    """The autocast path runs (CPU bf16 here) after an fp32 Accelerator in the same process."""
    cache, train, val = squares
    res = train_pacnet(_config(tiny), _train_config(epochs=1, mixed_precision="bf16"), cache,
                       train, val, tmp_path)
    assert np.isfinite(res.history[0]["train_loss"]) and 0 <= res.val_mae <= 100
    assert load_pacnet(res.best_dir).head.weight.dtype == torch.float32  # master weights fp32


def test_crop_ratio_is_deterministic():
    assert crop_ratio(1, 2, "abc", 0.1, 0.9) == crop_ratio(1, 2, "abc", 0.1, 0.9)
    assert crop_ratio(1, 2, "abc", 0.1, 0.9) != crop_ratio(1, 3, "abc", 0.1, 0.9)
    assert crop_ratio(1, None, "abc", 0.1, 0.9) != crop_ratio(2, None, "abc", 0.1, 0.9)


def test_train_config_defaults_and_validation():
    c = PacNetTrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.weight_decay, c.backbone_lr_mult, c.min_ratio,
            c.max_ratio, c.num_workers) == (30, 8, 5e-5, 5e-5, 0.2, 0.1, 0.9, 0)
    assert PacNetTrainConfig.demo(epochs=3).epochs == 3 and PacNetTrainConfig.demo().smooth_l1_beta < c.smooth_l1_beta
    with pytest.raises(ValueError, match="mixed_precision"):
        PacNetTrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="min_ratio"):
        PacNetTrainConfig(min_ratio=0.5, max_ratio=0.2)


def test_learns_progress_of_moving_squares(tiny, tmp_path):
    """Learnability: a square moving left -> right; the model must beat the mean predictor."""
    from pecn_ml.progress_estimation import estimate_for_entries, mae_by_task

    cache_t, train = moving_square_dataset(60, size=48, seed=1, prefix="t")
    cache_v, val = moving_square_dataset(24, size=48, seed=2, prefix="v")
    cache = ArrayFrameCache({**cache_t.videos, **cache_v.videos})
    cfg = PacNetConfig.tiny(tiny.resnet, tiny.clip_text)
    res = train_pacnet(cfg, PacNetTrainConfig.demo(cpu=True), cache, train, val, tmp_path)
    assert res.val_mae < 0.6 * res.baseline_mae, (res.val_mae, res.baseline_mae, res.history)
    rows = estimate_for_entries(load_pacnet(res.best_dir), cache, val, input_idx=20)
    assert len(rows) == len(val)
    truth = np.array([r["truth_percent"] for r in rows])
    floor = np.mean(np.abs(truth - res.mean_train_progress * 100))
    assert mae_by_task(rows)["all"]["mae"] < 0.6 * floor


# -- selection split, test score, model card ---------------------------------------------------


def _tasked(n_per_task: dict, prefix: str = "v") -> list[dict]:
    return [{"id": f"{prefix}{task}{i}", "label": "pushing something", "task": task}
            for task, n in n_per_task.items() for i in range(n)]


def test_selection_split_is_seeded_stratified_and_disjoint_from_the_evaluation_videos():
    train = _tasked({"move_object": 90, "drop_object": 70, "cover_object": 50, "back_and_forth": 30})
    evaluation = _tasked({"move_object": 9, "back_and_forth": 3}, prefix="e")
    cfg = PacNetTrainConfig(selection_fraction=0.1, selection_seed=5)
    splits = pacnet_splits(train, evaluation, cfg)
    # 10 % of each task (the training videos keep their task mix), 240 = 216 + 24
    assert splits.to_json()["per_task"] == {"move_object": 9, "drop_object": 7, "cover_object": 5,
                                            "back_and_forth": 3}
    assert len(splits.train) == 216 and len(splits.selection) == 24 and splits.test == evaluation
    ids = {name: {e["id"] for e in getattr(splits, name)} for name in ("train", "selection", "test")}
    assert not ids["train"] & ids["selection"] and not ids["selection"] & ids["test"]
    assert not ids["train"] & ids["test"] and ids["train"] | ids["selection"] == {e["id"] for e in train}
    # seeded: the same draw whatever the file order; another seed draws others
    assert pacnet_splits(train[::-1], evaluation, cfg).to_json()["ids"] == sorted(
        splits.to_json()["ids"], key=[e["id"] for e in train[::-1]].index)
    assert set(pacnet_splits(train, evaluation, replace(cfg, selection_seed=6)).to_json()["ids"]) != ids["selection"]
    assert splits.to_json()["overlap_with_test"] == []
    # an evaluation video among the training videos: refused, with the ids named
    with pytest.raises(SplitOverlap, match=r"training and evaluation .*'vmove_object3'"):
        pacnet_splits(train, evaluation + [train[3]], cfg)
    assert selection_counts({"a": 1, "b": 2, "c": 3}, 0.1) == {"a": 0, "b": 1, "c": 1}
    with pytest.raises(ValueError, match="selection_fraction"):
        PacNetTrainConfig(selection_fraction=0.0)


def test_train_pacnet_refuses_a_selection_split_that_overlaps_the_test_videos(tiny, squares, tmp_path):
    cache, train, val = squares
    with pytest.raises(SplitOverlap, match="selection .*test"):
        train_pacnet(_config(tiny), _train_config(epochs=1), cache, train, val, tmp_path, test_entries=val[:1])
    with pytest.raises(SplitOverlap, match="training .*selection"):
        train_pacnet(_config(tiny), _train_config(epochs=1), cache, train, train[:1], tmp_path)
    assert not (tmp_path / "best").exists()


def test_the_chosen_model_is_scored_on_the_test_videos_and_carries_a_card(tiny, tmp_path):
    from huggingface_hub import ModelCard

    from pecn_ml.model_cards import BaseWeights, CardContext

    cache, entries = moving_square_dataset(12, size=24, min_len=12, max_len=20, seed=4)
    train, selection, test = entries[:6], entries[6:8], entries[8:]
    cfg, tcfg = _config(tiny), _train_config(epochs=2)
    context = CardContext(run_id="run-123", data_versions={"annotations": "ann-v1"},
                          bases=(BaseWeights("resnet_base", "stand-in for microsoft/resnet-50", "resnet-abc", "f" * 64,
                                             "pecn-demo-stand-in"),))
    res = train_pacnet(cfg, tcfg, cache, train, selection, tmp_path, test_entries=test, card=context)
    assert res.num_val == 2 and res.num_test == 4 and np.isfinite(res.test_mae)
    # the best model's MAE and the mean predictor's, both on the test videos' fixed crops
    targets = PacNetCropDataset(cache, test, 4, 0.1, 0.9, seed=tcfg.val_seed, fixed=True).targets()
    assert res.test_baseline_mae == pytest.approx(np.mean(np.abs(targets - res.mean_train_progress)) * 100)
    assert res.val_mae == min(h["val_mae"] for h in res.history)   # the selection split picked the epoch
    card = ModelCard.load(tmp_path / "best" / "README.md").data.to_dict()
    assert card["dagster_run_id"] == "run-123" and card["data_versions"] == {"annotations": "ann-v1"}
    assert card["seed"] == tcfg.seed and card["training_config"]["epochs"] == 2 and card["head"] == "regression"
    assert card["base_weights"][0]["revision"] == "resnet-abc" and card["license"] == "other"
    assert card["loss_summary"]["best_epoch"] == res.best_epoch
    assert card["loss_summary"]["selection_mae_pp"] == pytest.approx(res.val_mae)
    assert load_pacnet(tmp_path / "best").config == cfg                     # the folder still loads
    # a finished run is not trained again, and still reports its test score
    again = train_pacnet(cfg, tcfg, cache, train, selection, tmp_path, test_entries=test, card=context)
    assert again.resumed_from_epoch == 2 and again.test_mae == pytest.approx(res.test_mae)
    # without a context the card names the bases as the trainer knows them (folder + weights sha)
    plain = train_pacnet(cfg, _train_config(epochs=1), cache, train, selection, tmp_path / "plain")
    bases = ModelCard.load(plain.best_dir / "README.md").data.base_weights
    assert [b["role"] for b in bases] == ["resnet_base", "clip_text_base"] and all(len(b["sha256"]) == 64 for b in bases)
    assert plain.num_test == 0 and np.isnan(plain.test_mae)
