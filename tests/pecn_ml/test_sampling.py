"""Sample selection, the copy-frame baseline and `evaluate_model` with the tiny InstructPix2Pix."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from pecn_ml.images import load_png
from pecn_ml.metrics import motion_mae, motion_mask, motion_psnr, psnr, ssim
from pecn_ml.models.tiny import build_tiny_pix2pix
from pecn_ml.training.autoencoder import roundtrip
from pecn_ml.sampling import (SamplingConfig, copy_frame_baseline, evaluate_model, load_pipeline, sample_seed,
                              ids_sha256, select_samples, stratified_draw)

R = 96


class FakeCache:
    """In-memory frame cache with the FrameCache contract: num_frames / frame / resolution / version."""

    def __init__(self, lengths: dict[str, int], resolution: int = R):
        self.resolution, self.version = resolution, "fake-v1"
        self._videos = {vid: self._render(int(vid), n) for vid, n in lengths.items()}

    def _render(self, k: int, n: int) -> np.ndarray:
        yy, xx = np.mgrid[0:self.resolution, 0:self.resolution]
        frames = []
        for t in range(n):  # a gradient background and a square that moves 2 px per frame
            img = np.stack([(xx + 3 * k) % 256, (yy * 2) % 256, np.full_like(xx, 40 * k % 256)], -1)
            x0 = (5 + 2 * t + k) % (self.resolution - 20)
            img[30:50, x0:x0 + 20] = [250, 250, 30]
            frames.append(img.astype(np.uint8))
        return np.stack(frames)  # (T, R, R, 3)

    def __contains__(self, vid):
        return vid in self._videos

    def num_frames(self, vid):
        if vid not in self._videos:
            raise KeyError(f"video {vid} is not in the frame cache")
        return len(self._videos[vid])

    def frame(self, vid, idx):
        return self._videos[vid][idx].copy()


def _entry(vid, task="move_object"):
    return {"id": vid, "label": "moving pen up", "template": "Moving [something] up",
            "placeholders": ["pen"], "task": task}


# 11 is short (24 frames), 12 is not cached, 13 appears twice. Tasks in name order cover, drop, move:
# the stratified draw (selection seed 0) takes 13, 14, then 15 (15 ranks before 16).
ENTRIES = [_entry("11"), _entry("12"), _entry("13", "cover_object"), _entry("13", "cover_object"),
           _entry("14", "drop_object"), _entry("15"), _entry("16")]
LENGTHS = {"11": 24, "13": 40, "14": 30, "15": 50, "16": 33}


@pytest.fixture(scope="module")
def cache():
    return FakeCache(LENGTHS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_pix2pix(tmp_path_factory.mktemp("tiny_models") / "tiny-instruct-pix2pix")


def _config(**kw):
    base = dict(target_idx=25, num_samples=3, num_inference_steps=2, batch_size=3, device="cpu", dtype="auto")
    base.update(kw)
    return SamplingConfig(**base)


@pytest.fixture(scope="module")
def evaluated(model_dir, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "test_result" / "run_a"
    logs: list[str] = []
    res = evaluate_model(model_dir, cache, ENTRIES, _config(), out, extra_metadata={"variant": "next5"},
                         log=logs.append)
    return res, logs


# ----------------------------------------------------------------------------- selection


def test_select_samples_matched_stratified_and_skip_reasons(cache):
    chosen, skipped = select_samples(cache, ENTRIES, 20, 25, 3)
    assert [s.video_id for s in chosen] == ["13", "14", "15"]                # one per task, in turns
    assert skipped == {"11": "only 24 frames; frame 25 (0-based) needed", "12": "not in frame cache",
                       "13": "duplicate id (entry 3)"}
    assert chosen[1].task == "drop_object" and chosen[1].num_frames == 30
    assert all(s.progress_percent is None for s in chosen)
    # target 21 is scored on the same videos (11 has frame 21 but not 25: next1 and next5 match)
    chosen21, skipped21 = select_samples(cache, ENTRIES, 20, 21, 3)
    assert [s.video_id for s in chosen21] == ["13", "14", "15"] and skipped21 == skipped
    # the draw does not depend on the annotation order; the fourth sample is the task with two left
    assert [s.video_id for s in select_samples(cache, ENTRIES[::-1], 20, 25, 3)[0]] == ["13", "14", "15"]
    assert [s.video_id for s in select_samples(cache, ENTRIES, 20, 25, 9)[0]] == ["13", "14", "15", "16"]
    # another selection seed ranks the move_object videos otherwise
    assert [s.video_id for s in select_samples(cache, ENTRIES, 20, 25, 3, selection_seed=5)[0]] == ["13", "14", "16"]


def test_stratified_draw_equal_per_task_within_one():
    by_task = {"a": [f"a{i}" for i in range(10)], "b": ["b0", "b1", "b2"], "c": [f"c{i}" for i in range(10)]}
    drawn = stratified_draw(by_task, 12, 0)
    counts = {t: sum(d.startswith(t) for d in drawn) for t in by_task}
    assert len(drawn) == len(set(drawn)) == 12 and counts == {"a": 5, "b": 3, "c": 4}  # b ran out after 3
    assert drawn[:3] == [min(by_task[t], key=lambda v: hashlib.sha256(f"0:{v}".encode()).hexdigest()) for t in "abc"]
    assert stratified_draw(by_task, 99, 0) == stratified_draw(by_task, 23, 0)   # all 23, once each
    assert stratified_draw({t: v[::-1] for t, v in by_task.items()}, 12, 0) == drawn
    assert stratified_draw(by_task, 12, 1) != drawn


def test_select_samples_progress_from_frames_or_estimates(cache):
    chosen, _ = select_samples(cache, ENTRIES, 20, 25, 3, add_progress=True)
    assert [s.progress_percent for s in chosen] == [50, 66, 40]  # int(20 / n * 100) for n = 40, 30, 50
    chosen, skipped = select_samples(cache, ENTRIES, 20, 25, 3, add_progress=True,
                                     progress_override={"13": 37.9, "15": 81, "16": 12})
    # a drawn video without an estimate is dropped, not replaced (the others stay matched)
    assert [(s.video_id, s.progress_percent) for s in chosen] == [("13", 37), ("15", 81)]
    assert skipped["14"] == "no PAC-Net progress estimate"
    with pytest.raises(ValueError, match="video 13"):
        select_samples(cache, ENTRIES, 20, 25, 3, add_progress=True, progress_override={"13": 140})
    with pytest.raises(ValueError, match="entry 0"):
        select_samples(cache, [{"label": "x"}], 20, 25, 3)


def test_select_samples_shuffled_progress_keeps_the_selection(cache):
    from pecn_ml.prompts import derangement

    true, skipped = select_samples(cache, ENTRIES, 20, 25, 3, add_progress=True)
    shuffled, skipped_s = select_samples(cache, ENTRIES, 20, 25, 3, add_progress=True, shuffle_seed=5)
    # the same videos as every other variant of the target (paired tests pair them), same skips
    assert [s.video_id for s in shuffled] == [s.video_id for s in true] == ["13", "14", "15"]
    assert skipped_s == skipped
    perm = derangement(3, 5)
    assert [s.progress_percent for s in shuffled] == [[50, 66, 40][j] for j in perm]
    assert all(s.progress_percent != t.progress_percent for s, t in zip(shuffled, true))  # 50, 66, 40 distinct
    assert [s.true_progress_percent for s in shuffled] == [50, 66, 40]
    # PAC-Net estimates are deranged the same way among the selected samples
    est = {"13": 37.9, "15": 81, "16": 12}
    by_est, _ = select_samples(cache, ENTRIES, 20, 25, 3, add_progress=True, progress_override=est, shuffle_seed=5)
    assert [s.video_id for s in by_est] == ["13", "15"]
    assert [s.progress_percent for s in by_est] == [81, 37]                    # two: swapped
    # without progress there is nothing to shuffle
    plain, _ = select_samples(cache, ENTRIES, 20, 25, 3, shuffle_seed=5)
    assert all(s.progress_percent is None for s in plain)
    with pytest.raises(ValueError, match="progress_shuffle_seed"):
        SamplingConfig(progress_shuffle_seed=5)  # needs add_progress


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(42, "74225") == 7140434681051731660  # fixed across processes / Python versions
    assert sample_seed(42, "74225") != sample_seed(43, "74225") != sample_seed(42, "74226")
    assert 0 <= sample_seed(0, "1") < 2 ** 63


def test_sampling_config_defaults_demo_and_validation():
    c = SamplingConfig()
    assert (c.input_idx, c.target_idx, c.num_samples, c.num_inference_steps, c.image_guidance_scale,
            c.guidance_scale, c.seed) == (20, 21, 100, 25, 1.5, 7.5, 42)
    d = SamplingConfig.demo(target_idx=25)
    assert d.num_samples < c.num_samples and d.num_inference_steps < c.num_inference_steps and d.target_idx == 25
    with pytest.raises(ValueError, match="target_idx"):
        SamplingConfig(target_idx=20)
    with pytest.raises(ValueError, match="batch_size"):
        SamplingConfig(batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        SamplingConfig(dtype="fp8")


def test_copy_frame_baseline_equals_input_vs_target_metrics(cache):
    res = copy_frame_baseline(cache, ENTRIES, 20, 25, 3)
    assert res["n"] == 3 and [s["video_id"] for s in res["samples"]] == ["13", "14", "15"]
    assert res["selection"]["ids"] == ["13", "14", "15"] and res["selection"]["per_task"] == {
        "cover_object": 1, "drop_object": 1, "move_object": 1}
    assert copy_frame_baseline(cache, ENTRIES, 20, 21, 3)["selection"] == res["selection"]   # matched
    assert res["skipped"]["11"].startswith("only 24 frames")
    for s in res["samples"]:
        inp, tgt = cache.frame(s["video_id"], 20), cache.frame(s["video_id"], 25)
        assert s["ssim"] == ssim(inp, tgt) and s["psnr"] == psnr(inp, tgt)
        mask = motion_mask(inp, tgt)
        assert s["motion_psnr"] == motion_psnr(inp, tgt, mask) and s["motion_mae"] == motion_mae(inp, tgt, mask)
        assert s["motion_fraction"] == pytest.approx(mask.mean()) and s["motion_psnr"] < s["psnr"]
        assert s["ssim"] < 0.99  # the square moved: not identical
    assert res["mean"]["ssim"] == pytest.approx(np.mean([s["ssim"] for s in res["samples"]]))
    assert res["std"]["psnr"] == pytest.approx(np.std([s["psnr"] for s in res["samples"]]))
    assert res["config"]["target_idx"] == 25 and res["config"]["cache_resolution"] == R
    json.dumps(res)  # JSON-able as is


# ----------------------------------------------------------------------------- evaluate_model


def test_output_folder_contents(evaluated):
    res, logs = evaluated
    out = res.out_dir
    ids = ["13", "14", "15"]
    assert sorted(p.name for p in out.iterdir()) == ["autoencoder", "comparison", "comparison_grid.png", "input",
                                                      "latent_copy", "output", "results.json", "target"]
    for sub in ("input", "target", "output", "autoencoder", "latent_copy", "comparison"):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{i}.png" for i in ids]
    assert load_png(out / "output" / "13.png").shape == (R, R, 3)
    comp = load_png(out / "comparison" / "13.png")
    assert comp.shape[1] > 5 * R and comp.shape[0] > R  # Input | GT | Output | VAE(GT) | VAE(Input), labels
    assert res.grid_png == out / "comparison_grid.png" and load_png(res.grid_png).shape[0] > 3 * R
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    assert any("sampling" in line and "3/3" in line for line in logs)


def test_results_json_schema_and_metrics_from_files(evaluated, cache, model_dir):
    res, _ = evaluated
    data = json.loads(res.results_json.read_text(encoding="utf-8"))
    assert {"samples", "mean", "std", "baseline_mean", "n", "config", "skipped", "checkpoint_sha256"} <= set(data)
    assert data["n"] == res.n == 3 and len(data["samples"]) == 3
    assert data["skipped"] == {"11": "only 24 frames; frame 25 (0-based) needed", "12": "not in frame cache",
                               "13": "duplicate id (entry 3)"}
    assert data["config"]["num_inference_steps"] == 2 and data["config"]["resolved_dtype"] == "float32"
    assert data["config"]["cache_version"] == "fake-v1" and data["metadata"] == {"variant": "next5"}
    assert data["checkpoint_sha256"] == res.checkpoint_sha256 and len(res.checkpoint_sha256) == 64
    out = res.out_dir
    for row in data["samples"]:
        assert set(row) >= {"video_id", "task", "label", "prompt", "progress_percent", "ssim", "psnr",
                            "baseline_ssim", "baseline_psnr", "autoencoder_ssim", "autoencoder_psnr"}
        vid = row["video_id"]
        assert row["prompt"] == "Generate a future frame of this action: moving something up"  # class text
        assert row["progress_percent"] is None
        pred, tgt, inp = (load_png(out / s / f"{vid}.png") for s in ("output", "target", "input"))
        assert np.array_equal(tgt, cache.frame(vid, 25)) and np.array_equal(inp, cache.frame(vid, 20))
        assert row["ssim"] == pytest.approx(ssim(pred, tgt), abs=1e-12)
        assert row["psnr"] == pytest.approx(psnr(pred, tgt), abs=1e-12)
        # the baseline is "output = input frame"
        assert row["baseline_ssim"] == pytest.approx(ssim(inp, tgt), abs=1e-12)
        assert row["baseline_psnr"] == pytest.approx(psnr(inp, tgt), abs=1e-12)
        # the ceiling is the model's own VAE round trip of the target
        ae = load_png(out / "autoencoder" / f"{vid}.png")
        again = roundtrip(load_pipeline(model_dir, "cpu", torch.float32).vae, tgt[None])[0]
        assert np.abs(ae.astype(int) - again).max() <= 1  # batch of 3 vs 1: an 8-bit rounding may flip
        assert row["autoencoder_ssim"] == pytest.approx(ssim(ae, tgt), abs=1e-12)
        assert row["autoencoder_psnr"] == pytest.approx(psnr(ae, tgt), abs=1e-12)
        # the latent copy is the model's own VAE round trip of the input frame
        lc = load_png(out / "latent_copy" / f"{vid}.png")
        again = roundtrip(load_pipeline(model_dir, "cpu", torch.float32).vae, inp[None])[0]
        assert np.abs(lc.astype(int) - again).max() <= 1
        assert not np.array_equal(lc, inp)  # the tiny VAE is lossy: not the copy frame
        assert row["latent_copy_ssim"] == pytest.approx(ssim(lc, tgt), abs=1e-12)
        assert row["latent_copy_psnr"] == pytest.approx(psnr(lc, tgt), abs=1e-12)
        # one motion mask (input vs target) for every method
        mask = motion_mask(inp, tgt)
        assert 0 < mask.mean() < 1 and row["motion_fraction"] == pytest.approx(mask.mean())
        for prefix, img in (("", pred), ("latent_copy_", lc), ("baseline_", inp), ("autoencoder_", ae)):
            assert row[f"{prefix}motion_psnr"] == pytest.approx(motion_psnr(img, tgt, mask), abs=1e-12), prefix
            assert row[f"{prefix}motion_mae"] == pytest.approx(motion_mae(img, tgt, mask), abs=1e-12), prefix
        assert row["baseline_motion_psnr"] < row["baseline_psnr"]  # copying errs only where it moved
    assert data["mean"]["ssim"] == pytest.approx(np.mean([r["ssim"] for r in data["samples"]]))
    assert data["std"]["psnr"] == pytest.approx(np.std([r["psnr"] for r in data["samples"]]))
    assert res.baseline_mean["ssim"] == pytest.approx(np.mean([r["baseline_ssim"] for r in data["samples"]]))
    assert data["autoencoder_mean"]["psnr"] == res.autoencoder_mean["psnr"] == pytest.approx(
        np.mean([r["autoencoder_psnr"] for r in data["samples"]]))
    for group, prefix in (("mean", ""), ("latent_copy_mean", "latent_copy_"), ("baseline_mean", "baseline_"),
                          ("autoencoder_mean", "autoencoder_")):
        assert set(data[group]) == {"ssim", "psnr", "motion_psnr", "motion_mae"}, group
        for metric in data[group]:
            assert data[group][metric] == pytest.approx(np.mean([r[prefix + metric] for r in data["samples"]]))
    assert res.latent_copy_mean == data["latent_copy_mean"] and res.latent_copy_std == data["latent_copy_std"]
    assert data["n_static"] == res.n_static == 0
    assert data["motion_fraction_mean"] == pytest.approx(np.mean([r["motion_fraction"] for r in data["samples"]]))
    assert "motion_region" in data["config"]["metrics"]
    assert data["selection"]["ids"] == [r["video_id"] for r in data["samples"]]
    assert data["selection"]["ids_sha256"] == ids_sha256(["13", "14", "15"]) and data["selection"]["seed"] == 0
    baseline = copy_frame_baseline(cache, ENTRIES, 20, 25, 3)
    assert baseline["mean"]["psnr"] == pytest.approx(data["baseline_mean"]["psnr"], abs=1e-12)
    assert baseline["mean"]["motion_psnr"] == pytest.approx(data["baseline_mean"]["motion_psnr"], abs=1e-12)


def test_same_seed_same_images_and_batch_size_independent_noise(evaluated, model_dir, cache, tmp_path):
    res, _ = evaluated
    again = evaluate_model(model_dir, cache, ENTRIES, _config(), tmp_path / "again")
    one_by_one = evaluate_model(model_dir, cache, ENTRIES, _config(batch_size=1), tmp_path / "b1")
    other_seed = evaluate_model(model_dir, cache, ENTRIES, _config(seed=7), tmp_path / "seed7")
    for vid in ("13", "14", "15"):
        ref = load_png(res.out_dir / "output" / f"{vid}.png").astype(int)
        assert np.array_equal(load_png(again.out_dir / "output" / f"{vid}.png"), ref)  # bit-identical
        # Batch size only changes float rounding (CPU kernels differ per batch shape): at most one
        # 8-bit level on a few pixels, versus large differences for another seed.
        b1 = load_png(one_by_one.out_dir / "output" / f"{vid}.png").astype(int)
        assert np.abs(b1 - ref).max() <= 1 and (b1 != ref).mean() < 0.01
        s7 = load_png(other_seed.out_dir / "output" / f"{vid}.png").astype(int)
        assert np.abs(s7 - ref).mean() > 5
    assert again.mean == res.mean
    assert one_by_one.mean["ssim"] == pytest.approx(res.mean["ssim"], abs=1e-3)


def test_progress_prompts_and_rerun_replaces_folder(model_dir, cache, tmp_path):
    out = tmp_path / "run"
    (out / "output").mkdir(parents=True)
    (out / "output" / "stale.png").write_bytes(b"old")
    res = evaluate_model(model_dir, cache, ENTRIES, _config(add_progress=True, num_samples=2, batch_size=2), out,
                         progress_override={"13": 37, "15": 81})
    assert not (out / "output" / "stale.png").exists()
    assert sorted(p.name for p in (out / "output").iterdir()) == ["13.png"]  # 14 drawn, no estimate
    data = json.loads(res.results_json.read_text(encoding="utf-8"))
    assert data["samples"][0]["prompt"] == ("Generate a future frame of this action: moving something up. "
                                            "And 37% of the action has been completed.")
    assert [r["progress_percent"] for r in data["samples"]] == [37]
    assert data["config"]["progress_source"] == "PAC-Net estimate"
    assert data["skipped"]["14"] == "no PAC-Net progress estimate"
    # without add_progress the override is ignored (one mapping can be passed to every variant)
    plain = evaluate_model(model_dir, cache, ENTRIES, _config(num_samples=1), tmp_path / "plain",
                           progress_override={"13": 37})
    assert plain.samples[0]["progress_percent"] is None and "%" not in plain.samples[0]["prompt"]
    # the control arm: another selected video's percent in each prompt, recorded as such
    shuffled = evaluate_model(model_dir, cache, ENTRIES, _config(add_progress=True, progress_shuffle_seed=16,
                                                                 num_samples=2, batch_size=2), tmp_path / "shuffled")
    data = json.loads(shuffled.results_json.read_text(encoding="utf-8"))
    assert data["config"]["progress_source"] == "shuffled (seed 16)" and data["config"]["progress_shuffle_seed"] == 16
    assert [(r["video_id"], r["true_progress_percent"], r["progress_percent"]) for r in data["samples"]] == [
        ("13", 50, 66), ("14", 66, 50)]  # two samples: the one derangement swaps them
    assert data["samples"][0]["prompt"].endswith("And 66% of the action has been completed.")


def test_clear_errors(model_dir, cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        evaluate_model(tmp_path, cache, ENTRIES, _config(), tmp_path / "out")
    with pytest.raises(ValueError, match="no eligible sample"):
        evaluate_model(model_dir, cache, [_entry("12")], _config(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="VAE scale factor"):
        evaluate_model(model_dir, FakeCache({"13": 40}, resolution=30), [_entry("13")], _config(),
                       tmp_path / "odd")
    assert not (tmp_path / "odd").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".odd")]
