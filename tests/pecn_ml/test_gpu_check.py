"""`make gpu-check` (pecn_ml/gpu_check.py): one clear line without CUDA, and the projection's
arithmetic from given timings. The measurements themselves need a GPU."""

import os
import subprocess
import sys

import pytest

from pecn_ml.data.pairs import FramePairDataset
from pecn_ml.gpu_check import (EXIT_NO_CUDA, Experiment, Timings, pacnet_config, pix2pix_config, plans_for,
                               project, projection_table, random_videos)
from pecn_ml.profiles import full_profile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_without_cuda_it_says_so_in_one_line_and_fails():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}   # no GPU, even on a GPU machine
    done = subprocess.run([sys.executable, "-m", "pecn_ml.gpu_check"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == EXIT_NO_CUDA != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu-check: no CUDA GPU visible, nothing to measure: "), lines[0]


def test_the_experiment_is_the_full_profiles():
    e = Experiment.from_profile(full_profile())
    assert (e.train_videos, e.val_videos, e.variants, e.evaluations) == (8000, 400, 4, 8)
    assert (e.pix2pix_epochs, e.pix2pix_global_batch, e.pacnet_epochs, e.pacnet_global_batch) == (40, 16, 30, 8)
    assert e.pix2pix_steps() == 40 * 500 and e.pacnet_steps() == 30 * 1000
    assert Experiment.from_profile(full_profile(), train_videos=7001).pix2pix_steps() == 40 * 438


def test_projection_from_given_timings():
    e = Experiment(train_videos=160, val_videos=10, variants=4, pix2pix_epochs=2, pix2pix_global_batch=16,
                   pacnet_heads=2, pacnet_epochs=3, pacnet_global_batch=8, eval_sets=2, samples_per_eval_set=5,
                   latent_frames=3)
    one = Timings(processes=1, pix2pix_s_per_step=0.5, pacnet_s_per_step=0.25, pacnet_s_per_video=0.01,
                  eval_s_per_sample=2.0, encode_s_per_frame=0.001)
    p = project(e, one, gpus=1)
    head = 3 * 20 * 0.25 + 3 * 10 * 0.01          # 60 steps + validation every epoch
    variant = 2 * 10 * 0.5                         # 20 steps
    assert p["pool_limit"] == 1
    assert p["pacnet"] == pytest.approx(2 * head)
    assert p["progress_estimates"] == pytest.approx(170 * 0.01)
    assert p["latent_cache"] == pytest.approx(3 * 160 * 0.001)
    assert p["ip2p_model"] == pytest.approx(4 * variant)
    assert p["evaluation"] == pytest.approx(4 * 2 * 5 * 2.0)
    assert p["total"] == pytest.approx(sum(p[k] for k in ("pacnet", "progress_estimates", "latent_cache",
                                                          "ip2p_model", "evaluation")))
    # four GPUs, one process per step: the pool runs four variants (and both heads) at once
    four = project(e, one, gpus=4)
    assert four["pool_limit"] == 4
    assert (four["ip2p_model"], four["pacnet"], four["evaluation"]) == pytest.approx((variant, head, 20.0))
    # three GPUs: two rounds of variants; K = 2 on four GPUs: a pool of 2, two rounds at K = 2's speed
    assert project(e, one, gpus=3)["ip2p_model"] == pytest.approx(2 * variant)
    two = Timings(processes=2, pix2pix_s_per_step=0.3, pacnet_s_per_step=0.15, pacnet_s_per_video=0.01,
                  eval_s_per_sample=2.0)
    k2 = project(e, two, gpus=4)
    assert k2["pool_limit"] == 2 and k2["ip2p_model"] == pytest.approx(2 * 20 * 0.3)


def test_plans_and_table():
    one = Timings(1, 0.5, 0.25, 0.01, 2.0)
    two = Timings(2, 0.3, 0.15, 0.01, 2.0)
    assert [(n, t.processes) for n, t in plans_for(1, [], one, None)] == [(1, 1)]
    assert [(n, t.processes) for n, t in plans_for(2, [4], one, two)] == [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2)]
    table = projection_table(Experiment.from_profile(full_profile()), plans_for(2, [], one, two)).splitlines()
    assert table[0].split()[:3] == ["plan", "gpu", "pool"] and len(table) == 2 + 3
    assert table[2].startswith("1 GPU, K=1") and table[-1].startswith("2 GPUs, K=2")
    # 1 GPU: 4 x 20,000 steps x 0.5 s = 11.1 h of variants alone
    assert "11.1 h" in table[2]


def test_check_configs_keep_the_global_batch():
    for k in (1, 2, 4):
        c = pix2pix_config(steps=6, processes=k, latent_dir="/tmp/x")
        assert c.train_batch_size * k * c.gradient_accumulation_steps == 16
        assert (c.mixed_precision, c.resolution, c.max_train_steps) == ("fp16", 224, 6)
        assert c.checkpointing_steps > 6 and c.num_validation_samples == 0
        p = pacnet_config(k)
        assert p.batch_size * k == 8 and p.mixed_precision == full_profile().pacnet_train.mixed_precision


def test_the_checks_random_videos_make_frame_pairs():
    cache, entries = random_videos(3, frames=22, resolution=32)
    assert cache.resolution == 32 and "32" in cache.version
    pairs = FramePairDataset(cache, entries, input_idx=20, target_idx=21)
    assert len(pairs) == 3 and pairs[0]["input"].shape == (3, 32, 32)
    assert pairs.prompts[0].endswith("pushing something from left to right")
