"""Learnability: InstructPix2Pix fine-tuning must actually learn to produce the next frame.

"It trains" is not "it works": a bug that stops the UNet from using the input image (wrong
conditioning latents, wrong scaling factor, prompts not reaching it) still lowers the loss a
little. So, on a small synthetic SSv2 set with a VAE trained on it (the demo's stand-in recipe,
shortened), the fine-tuned model is sampled like an evaluation and scored against the target
frame, beside the VAE's own round trip of the target (the ceiling no latent model can beat):

- the fine-tuned model reaches LEARNED of the ceiling's SSIM, the untrained one stays below
  UNTRAINED of it;
- the same fine-tuning with the image latents zeroed inside the training step (a planted
  conditioning bug) falls short of LEARNED: the check detects it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

LEARNED = 0.85      # fine-tuned SSIM / autoencoder-ceiling SSIM must reach this
UNTRAINED = 0.6     # ... and the untrained model stays below this
RES = 64            # frame size: small enough for CI, large enough for the synthetic scenes
TEMPLATES = ("Pushing [something] from left to right", "Moving [something] up",
             "Dropping [something] onto [something]", "Covering [something] with [something]")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic videos, their RES px frame cache, and an InstructPix2Pix folder whose VAE was
    trained on the training frames and whose UNet is random (the untrained model)."""
    from pecn_ml.data.annotations import FilterConfig, filter_annotations, load_filtered
    from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache
    from pecn_ml.data.synthetic import SyntheticConfig, write_synthetic_ssv2
    from pecn_ml.data.templates import label_key_of
    from pecn_ml.models.tiny import build_tiny_tokenizer, save_pix2pix_pipeline, tiny_text_encoder, tiny_unet, tiny_vae
    from pecn_ml.training.autoencoder import AutoencoderTrainConfig, latent_scaling_factor, train_autoencoder

    root = tmp_path_factory.mktemp("learnability")
    data = root / "data"
    write_synthetic_ssv2(data, SyntheticConfig.tiny(templates=tuple(label_key_of(t) for t in TEMPLATES),
                                                    task_train_per_template=6, task_val_per_template=3,
                                                    num_test=0, short_fraction=0.0))
    filter_annotations(data, FilterConfig())
    train = load_filtered(data / "annotations" / "train_filtered.json")
    val = load_filtered(data / "annotations" / "val_filtered.json")
    build_frame_cache(data, RES, [e["id"] for e in train + val])
    cache = open_frame_cache(data, RES)
    frames = np.concatenate([cache.frames(e["id"]) for e in train])          # (N, RES, RES, 3)

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(root / "tok")
    vae = tiny_vae()
    train_autoencoder(vae, frames, AutoencoderTrainConfig(steps=400, batch_size=32, crop=32))
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, frames[::4]))
    base = save_pix2pix_pipeline(root / "untrained", vae=vae, text_encoder=tiny_text_encoder(tokenizer),
                                 tokenizer=tokenizer, unet=tiny_unet(8, (32, 32)))
    return {"root": root, "cache": cache, "train": train, "val": val, "base": base}


def ceiling_ratio(world, model_dir: Path, name: str) -> float:
    """SSIM of the sampled next frame over the autoencoder ceiling's, on the validation videos."""
    from pecn_ml.sampling import SamplingConfig, evaluate_model

    config = SamplingConfig(num_samples=12, num_inference_steps=10, batch_size=12, seed=0)
    res = evaluate_model(model_dir, world["cache"], world["val"], config, world["root"] / "eval" / name)
    return res.mean["ssim"] / res.autoencoder_mean["ssim"]


def fine_tune(world, name: str) -> Path:
    from pecn_ml.data.pairs import FramePairDataset
    from pecn_ml.training.pix2pix import Pix2PixTrainConfig, train_pix2pix

    pairs = FramePairDataset(world["cache"], world["train"], input_idx=20, target_idx=21)
    config = Pix2PixTrainConfig.demo(resolution=RES, learning_rate=1e-3, train_batch_size=16, gradient_accumulation_steps=1,
                                     max_train_steps=400, num_validation_samples=0, lr_scheduler="cosine",
                                     latent_cache_dir=str(world["root"] / "latents"))
    return train_pix2pix(world["base"], pairs, config, world["root"] / name).model_dir


def test_fine_tuning_learns_the_next_frame_and_a_conditioning_bug_is_caught(world, monkeypatch):
    untrained = ceiling_ratio(world, world["base"], "untrained")
    learned = ceiling_ratio(world, fine_tune(world, "learned"), "learned")
    assert untrained < UNTRAINED, untrained
    assert learned >= LEARNED, (learned, untrained)

    import pecn_ml.training.pix2pix as trainer

    real_step = trainer.training_step

    def zeroed_image_latents(unet, scheduler, batch, draws, **kw):
        return real_step(unet, scheduler, replace(batch, image_latents=torch.zeros_like(batch.image_latents)),
                         draws, **kw)

    monkeypatch.setattr(trainer, "training_step", zeroed_image_latents)
    broken = ceiling_ratio(world, fine_tune(world, "broken"), "broken")
    assert broken < LEARNED, (broken, learned)      # the same check flags the planted bug
