"""Learnability of the text conditioning: a tiny InstructPix2Pix must learn which way the prompt
says an object moves, and a planted bug that zeroes the text embeddings must fail the same check.

The toy world (`pecn_test_support.direction_toy`): 32 px frames, one 8 px square on a flat
background; the target is the input with the square moved 10 px (TOY.shift) left or right, and
the prompt is "move left" or "move right". The input frame cannot tell the direction, so a model
that does not read the prompt can only move the square one way or the other by chance.

Both arms fine-tune with the platform's loop (`train_pix2pix`: latent and prompt-embedding cache,
`training_step`) and sample with the platform's pipeline (`sampling.load_pipeline`,
`predict_batch`). For N_TEST inputs, each is sampled with "move left" and with "move right" from
the same generator seed, and the square's centroid x is measured on the decoded outputs. A perfect
model moves it by 2 x 10 px between the two; the check is a one-sided sign test that the median of
(x_right - x_left) exceeds 10 px (inputs where it does not, or where the square vanished, count
against), at p < ALPHA:

- fine-tuned as is, the check passes;
- fine-tuned with the prompt embeddings zeroed inside `training_step` (the planted bug, in the
  training path only; sampling is untouched), it fails, although that model still learned to move
  the square (by chance direction).

Toy-model choices, each needed to learn within the time budget (2 CPU cores, one thread each):
- the scheduler predicts v, not the noise: the direction is decided at high noise, where an
  epsilon target carries the clean latents only with weight sqrt(abar / (1 - abar)) (< 0.2 above
  t = 800). With epsilon, TRAIN_STEPS leave the prompt unused (6 and 3 of 32 swaps, two seeds);
  with v the model follows it after 200-300 steps, depending on the initial weights and data
  order (of the (UNet, training) seed pairs tried, 11 of 11 pass at 300 steps, 5 of 7 at 250,
  1 of 4 at 200), hence TRAIN_STEPS;
- the prompts are the bare instructions: behind the platform's 40-character prompt prefix the
  tiny random text encoder's embeddings of the two differ by ~5% (~21% without it), and after
  TRAIN_STEPS the prompt is unused (0 of 32 swaps, two seeds);
- the UNet is the tiny stand-in's at 16 channels: it picks the prompt up in fewer steps than at
  32 (at 300 steps 3 of 4 seed pairs pass at 32 channels), for about the same cost per step;
- the VAE is the tiny stand-in's, trained briefly on the toy frames (its round trip keeps the
  square's position; the square is 8 px, since a 6 px one was still lost after as many steps).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pecn_test_support.direction_toy import DirectionToy, direction_prompt

TOY = DirectionToy(resolution=32, size=8, shift=10)
N_TRAIN = 256            # training pairs, half of each direction
N_TEST = 32              # inputs sampled with both prompts (the sign test's n; >= 16)
TRAIN_STEPS = 400        # optimizer steps of each arm
ALPHA = 0.01
VAE_STEPS = 200
UNET_CHANNELS = (16, 16)


@dataclass(frozen=True)
class SwapResult:
    """Centroid x of the square in the outputs for "move left" and "move right", per input."""

    inputs: np.ndarray   # (n,) of the input frames
    left: np.ndarray     # (n,) NaN where the square vanished
    right: np.ndarray

    @property
    def swap(self) -> np.ndarray:
        """x_right - x_left per input (2 x shift for a perfect model, ~0 for one blind to text)."""
        return self.right - self.left

    @property
    def moved(self) -> np.ndarray:
        """|x_out - x_in| of every output: ~shift for a model that learned to move the square."""
        return np.abs(np.concatenate([self.left, self.right]) - np.concatenate([self.inputs, self.inputs]))

    @property
    def successes(self) -> int:
        return int(np.sum(np.nan_to_num(self.swap, nan=-np.inf) > TOY.shift))

    @property
    def p_value(self) -> float:
        """One-sided sign test of median(swap) > shift; NaN (no square) counts against."""
        from scipy.stats import binomtest

        return float(binomtest(self.successes, len(self.swap), 0.5, alternative="greater").pvalue)

    def summary(self) -> str:
        return (f"{self.successes}/{len(self.swap)} swaps > {TOY.shift} px, p = {self.p_value:.2e}, "
                f"median swap {np.nanmedian(self.swap):.2f} px, median move {np.nanmedian(self.moved):.2f} px")


def build_world(root: Path) -> dict:
    """The training pairs, and an InstructPix2Pix folder (v-prediction) whose VAE was trained on
    their frames and whose UNet is random."""
    from diffusers import EulerAncestralDiscreteScheduler

    from pecn_ml.models.tiny import build_tiny_tokenizer, save_pix2pix_pipeline, tiny_text_encoder, tiny_unet, tiny_vae
    from pecn_ml.training.autoencoder import (AutoencoderTrainConfig, latent_scaling_factor, roundtrip,
                                              train_autoencoder)

    pairs = TOY.pairs(N_TRAIN, seed=0)
    frames = pairs.all_frames()                                              # (2N, R, R, 3)
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(root / "tokenizer")
    text_encoder = tiny_text_encoder(tokenizer)
    vae = tiny_vae()
    train_autoencoder(vae, frames, AutoencoderTrainConfig(steps=VAE_STEPS, batch_size=8, crop=TOY.resolution))
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, frames[::4]))
    seen = [(TOY.centroid_x(a), TOY.centroid_x(b)) for a, b in zip(frames[:16], roundtrip(vae, frames[:16]))]
    assert all(abs(a - b) < 1 for a, b in seen), f"the VAE loses the square: {seen}"  # else nothing can pass
    torch.manual_seed(0)
    base = save_pix2pix_pipeline(root / "untrained", vae=vae, text_encoder=text_encoder,
                                 tokenizer=tokenizer, unet=tiny_unet(8, UNET_CHANNELS))
    scheduler = EulerAncestralDiscreteScheduler.from_pretrained(base, subfolder="scheduler",
                                                                prediction_type="v_prediction")
    scheduler.save_pretrained(base / "scheduler")
    return {"root": root, "pairs": pairs, "base": base}


def fine_tune(world: dict, name: str, base: Path | None = None, seed: int = 0) -> Path:
    """`train_pix2pix` on the toy pairs (`base`, `seed`: other initial weights / data orders, for
    re-running the seed sweep of the module docstring)."""
    from pecn_ml.training.pix2pix import Pix2PixTrainConfig, train_pix2pix
    from pecn_ml.training.tracking import TrackingConfig

    config = Pix2PixTrainConfig.demo(resolution=TOY.resolution, train_batch_size=16, gradient_accumulation_steps=1,
                                     learning_rate=2e-3, lr_scheduler="cosine", max_train_steps=TRAIN_STEPS,
                                     conditioning_dropout_prob=0.05, num_validation_samples=0,
                                     checkpointing_steps=10 * TRAIN_STEPS, seed=seed)
    return train_pix2pix(base or world["base"], world["pairs"], config, world["root"] / name,
                         tracking=TrackingConfig(backend="none")).model_dir


def swap_direction(model_dir: Path) -> SwapResult:
    """Sample N_TEST new inputs with each prompt (same seed per input); measure the square."""
    from pecn_ml.sampling import SamplingConfig, load_pipeline, predict_batch

    config = SamplingConfig(num_inference_steps=10)    # text / image guidance: the platform's 7.5 / 1.5
    pipe = load_pipeline(model_dir, torch.device("cpu"), torch.float32)
    inputs = [TOY.frame(x, y) for x, y in TOY.inputs(N_TEST, seed=1)]
    seeds = [1000 + i for i in range(N_TEST)]
    left, right = (predict_batch(pipe, inputs, [direction_prompt(d)] * N_TEST, seeds, config)
                   for d in ("left", "right"))
    return SwapResult(_centroids(inputs), _centroids(left), _centroids(right))


def _centroids(frames) -> np.ndarray:
    return np.array([TOY.centroid_x(f) for f in frames])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Built once per worker: under `-n 2` the two arms may run side by side, each building it
    (~10 s, deterministic), rather than one after the other."""
    return build_world(tmp_path_factory.mktemp("direction"))


@pytest.fixture(scope="module")
def learned(world) -> SwapResult:
    return swap_direction(fine_tune(world, "learned"))


@pytest.fixture(scope="module")
def broken(world) -> SwapResult:
    """The same fine-tuning with the prompt embeddings zeroed inside the training step."""
    import pecn_ml.training.pix2pix as trainer

    real_step = trainer.training_step

    def zeroed_prompt_embeds(unet, scheduler, batch, draws, **kw):
        return real_step(unet, scheduler, replace(batch, prompt_embeds=torch.zeros_like(batch.prompt_embeds)),
                         draws, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "training_step", zeroed_prompt_embeds)
        model_dir = fine_tune(world, "broken")
    return swap_direction(model_dir)


def test_swapping_the_direction_word_moves_the_object_the_other_way(learned):
    print("learned:", learned.summary())
    assert learned.p_value < ALPHA, learned.summary()
    assert np.nanmedian(learned.swap) > 1.5 * TOY.shift, learned.summary()


def test_zeroed_text_embeddings_fail_the_same_check(broken):
    print("text embeddings zeroed in training:", broken.summary())
    assert np.nanmedian(broken.moved) > TOY.shift / 2, broken.summary()   # it learned to move the square ...
    assert broken.p_value >= ALPHA, broken.summary()                     # ... but not where the prompt says
