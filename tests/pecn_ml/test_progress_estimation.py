"""Progress estimation with PAC-Net: output range, frame sampling, per-entry rows, MAE by task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pecn_ml.models.pacnet import PacNet, PacNetConfig
from pecn_ml.models.tiny import build_tiny_models
from pecn_ml.progress_estimation import estimate_for_entries, estimate_progress, mae_by_task
from pecn_ml.training.pacnet_data import ArrayFrameCache
from pecn_test_support.moving_squares import moving_square_dataset


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="module", params=["regression", "classification"])
def model(tiny, request):
    torch.manual_seed(0)
    cfg = PacNetConfig.tiny(tiny.resnet, tiny.clip_text, head=request.param, hidden_dim=32,
                            num_frames=4, heads=4)
    return PacNet(cfg).eval()


@pytest.fixture(scope="module")
def squares():
    cache, entries = moving_square_dataset(5, size=24, min_len=18, max_len=30, seed=4)
    for e, task in zip(entries, ["move_object", "drop_object", "move_object", "cover_object",
                                 "drop_object"]):
        e["task"] = task
    return cache, entries


def test_estimate_progress_range_and_inputs(model, squares):
    cache, entries = squares
    vid = entries[0]["id"]
    frames = cache.frames(vid, range(11))  # frames 0..10 seen
    pct = estimate_progress(model, frames, entries[0]["label"])
    assert isinstance(pct, float) and 0.0 <= pct <= 100.0
    assert estimate_progress(model, list(frames), entries[0]["label"]) == pct
    # only the sampled frames matter: frames 0, 3, 7, 10 of 11 (num_frames = 4)
    changed = frames.copy()
    changed[[1, 2, 4, 5, 6, 8, 9]] = 0
    assert estimate_progress(model, changed, entries[0]["label"]) == pct
    changed[10] = 0  # the last seen frame always counts
    assert estimate_progress(model, changed, entries[0]["label"]) != pct
    one = estimate_progress(model, frames[:1], "moving something up")  # a single frame works
    assert 0.0 <= one <= 100.0
    with pytest.raises(ValueError, match="uint8"):
        estimate_progress(model, frames.astype(np.float32), "x")
    with pytest.raises(ValueError, match="text"):
        estimate_progress(model, frames, "")
    assert model.training is False


def test_estimate_for_entries_rows_skips_and_matches_single(model, squares):
    cache, entries = squares
    short = {"id": "short", "label": "moving something up", "task": "move_object"}
    class Both:
        def __init__(self):
            self.extra = ArrayFrameCache({"short": np.zeros((20, 24, 24, 3), np.uint8)})

        def num_frames(self, v):
            return 20 if v == "short" else cache.num_frames(v)

        def frame(self, v, i):
            return self.extra.frame(v, i) if v == "short" else cache.frame(v, i)

    lines = []
    rows = estimate_for_entries(model, Both(), entries + [short], input_idx=20, log=lines.append,
                                batch_size=2)
    assert any("skipped 1 of 6" in ln for ln in lines)  # num_frames == input_idx is skipped
    assert [r["video_id"] for r in rows] == [e["id"] for e in entries]
    for r, e in zip(rows, entries):
        assert set(r) == {"video_id", "task", "estimate_percent", "truth_percent"}
        assert r["task"] == e["task"]
        assert r["truth_percent"] == pytest.approx(20 / cache.num_frames(e["id"]) * 100)
        assert 0 <= r["estimate_percent"] <= 100
    # batching does not change a video's estimate: same as estimate_progress on frames 0..20
    frames = cache.frames(entries[2]["id"], range(21))
    single = estimate_progress(model, frames, entries[2]["label"])
    assert rows[2]["estimate_percent"] == pytest.approx(single, abs=1e-4)


def test_mae_by_task():
    rows = [{"task": "a", "estimate_percent": 50, "truth_percent": 40},
            {"task": "a", "estimate_percent": 30, "truth_percent": 40},
            {"task": "b", "estimate_percent": 90, "truth_percent": 60}]
    out = mae_by_task(rows)
    assert out["a"] == {"n": 2, "mae": 10.0}
    assert out["b"] == {"n": 1, "mae": 30.0}
    assert out["all"]["n"] == 3 and out["all"]["mae"] == pytest.approx(50 / 3)
    assert mae_by_task([]) == {}
