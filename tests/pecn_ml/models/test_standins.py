"""Stand-ins for the pretrained weights: trained, loadable like the hub models, content-addressed,
and the three trainers behind them (autoencoder, instruct pretraining, ResNet pretraining)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pecn_ml.metrics import psnr
from pecn_ml.models.standins import (StandinConfig, build_standin_clip_text, build_standin_pix2pix,
                                     build_standin_resnet, standin_key)
from pecn_ml.models.tiny import tiny_vae
from pecn_ml.training.autoencoder import (AutoencoderTrainConfig, latent_scaling_factor, roundtrip,
                                          train_autoencoder)
from pecn_ml.training.instruct_pretrain import InstructPretrainConfig, encode_videos
from pecn_ml.training.pacnet_data import moving_square_video
from pecn_ml.training.resnet_pretrain import ResnetPretrainConfig, motion_masks, region_stats


def _videos(n=4, size=32, frames=10, seed=0):
    rng = np.random.default_rng(seed)
    return [moving_square_video(frames, size, rng=rng) for _ in range(n)]


TINY = StandinConfig(autoencoder=AutoencoderTrainConfig(steps=30, batch_size=8, crop=16),
                     instruct=InstructPretrainConfig(steps=6, batch_size=4),
                     resnet=ResnetPretrainConfig(steps=4, batch_size=8))


def test_autoencoder_training_improves_the_round_trip():
    torch.manual_seed(0)
    frames = np.concatenate(_videos(6))                                  # (60, 32, 32, 3)
    vae = tiny_vae()
    before = np.mean(psnr(roundtrip(vae, frames[:8]), frames[:8]))
    res = train_autoencoder(vae, frames, AutoencoderTrainConfig(steps=150, batch_size=16, crop=16))
    after = np.mean(psnr(roundtrip(vae, frames[:8]), frames[:8]))
    assert len(res.losses) == 150 and np.mean(res.losses[-10:]) < np.mean(res.losses[:10])
    assert after > before + 5, (before, after)
    assert not any(p.requires_grad for p in vae.parameters())          # frozen afterwards
    means = torch.cat([vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean])
    assert means.shape == (1, 4, 8, 8)                                   # 4x downsampling
    with pytest.raises(ValueError, match="multiple of"):
        train_autoencoder(vae, frames, AutoencoderTrainConfig(steps=1, crop=18))


@torch.no_grad()
def test_scaling_factor_gives_unit_variance_latents():
    torch.manual_seed(0)
    vae, frames = tiny_vae(), np.concatenate(_videos(2))
    s = latent_scaling_factor(vae, frames)
    from pecn_ml.training.autoencoder import frames_to_pixels
    z = vae.encode(frames_to_pixels(frames)).latent_dist.mean * s
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)


def test_generic_pairs_cover_every_offset():
    torch.manual_seed(0)
    lat = encode_videos(tiny_vae(), _videos(2, frames=6), max_offset=2)
    assert lat.mean.shape == (12, 4, 8, 8)
    # per video: 5 pairs with k=1 and 4 with k=2; the second video's rows start at 6
    assert len(lat.pairs) == 2 * (5 + 4)
    assert {tuple(p) for p in lat.pairs.tolist()} >= {(0, 1, 1), (0, 2, 2), (6, 7, 1), (9, 11, 2)}
    assert all(t - i == k for i, t, k in lat.pairs.tolist())


def test_motion_masks_find_the_moving_square():
    video = _videos(1, size=32, frames=12)[0]
    masks = motion_masks(video, threshold=25)
    assert masks.shape == (12, 32, 32) and 0 < masks.mean() < 0.5
    stats = region_stats(torch.from_numpy(masks))
    assert stats[-1, 0] > stats[0, 0]                                    # it moves left to right
    one = torch.zeros(1, 10, 10)
    one[0, 2, 7] = 1
    assert region_stats(one)[0].tolist() == pytest.approx([7 / 9, 2 / 9, 0.1])


def test_pix2pix_standin_loads_like_the_hub_model_and_is_reused(tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    videos = _videos()
    held_out = np.stack([v[3] for v in _videos(2, seed=9)])
    logs: list[str] = []
    built = build_standin_pix2pix(tmp_path, videos, TINY, "data-v1", eval_frames=held_out, log=logs.append)
    assert not built.reused and built.path.name == f"instruct-pix2pix-{standin_key('pix2pix', TINY, 'data-v1')}"
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(built.path, safety_checker=None,
                                                                  requires_safety_checker=False)
    assert pipe.unet.config.in_channels == 8
    assert pipe.vae.config.scaling_factor == pytest.approx(built.report["vae_scaling_factor"])
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)     # measured, not SD's
    assert {"roundtrip_psnr", "roundtrip_ssim", "autoencoder_loss", "instruct_loss"} <= set(built.report)
    assert built.report["data_version"] == "data-v1" and built.report["train_videos"] == 4
    again = build_standin_pix2pix(tmp_path, videos, TINY, "data-v1", log=logs.append)
    assert again.reused and again.path == built.path and again.weights_sha256 == built.weights_sha256
    assert any("reusing" in line for line in logs)
    other = build_standin_pix2pix(tmp_path, videos, TINY, "data-v2")       # new data: a new folder
    assert other.path != built.path and built.path.is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_resnet_and_clip_text_standins(tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer, ResNetModel

    resnet = build_standin_resnet(tmp_path, _videos(), TINY, "data-v1")
    assert ResNetModel.from_pretrained(resnet.path).config.hidden_sizes == [16, 32]
    assert resnet.report["pretrain_loss"]["steps"] == 4
    clip = build_standin_clip_text(tmp_path, TINY)
    CLIPTextModel.from_pretrained(clip.path)
    assert CLIPTokenizer.from_pretrained(clip.path)("moving something up").input_ids
    assert standin_key("resnet", TINY, "a") != standin_key("resnet", replace(TINY, seed=1), "a")
    with pytest.raises(ValueError, match="no training videos"):
        build_standin_resnet(tmp_path, [], TINY, "x")
