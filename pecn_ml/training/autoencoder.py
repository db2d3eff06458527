"""Train a Stable-Diffusion-style `AutoencoderKL` on video frames (the demo's stand-in VAE).

A random tiny VAE reconstructs nothing, so the demo trains its VAE first, like SD's: a posterior
sample is decoded, loss MSE + L1 + a small KL term, on random crops (it is fully convolutional).
`latent_scaling_factor` is 1 / std of the posterior means (SD's `scaling_factor`); `roundtrip` is
decode(encode(x)) at the mode, the "autoencoder ceiling" of the evaluations. `train_steps` is the
loop of all three stand-in pretrainers (this one, `instruct_pretrain`, `resnet_pretrain`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from pecn_ml.utils.progress import LogFn, ProgressMeter


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """How the stand-in VAE is trained (defaults: the demo's, ~1.7 minutes on 2 CPU cores)."""

    steps: int = 1100
    batch_size: int = 48
    crop: int = 32                 # random square patches; must be a multiple of the VAE's factor
    learning_rate: float = 3e-3    # AdamW, cosine-annealed to 0 over `steps`
    l1_weight: float = 1.0         # loss = MSE + l1_weight * L1 + kl_weight * KL
    kl_weight: float = 1e-6
    seed: int = 0
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.crop < 8:
            raise ValueError("AutoencoderTrainConfig: steps, batch_size >= 1 and crop >= 8 needed")
        if self.learning_rate <= 0 or self.l1_weight < 0 or self.kl_weight < 0:
            raise ValueError("AutoencoderTrainConfig: learning_rate > 0, weights >= 0 needed")


def frames_to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(B, R, R, 3) uint8 -> (B, 3, R, R) float32 in [-1, 1] (the pipelines' normalisation)."""
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, frames.shape
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def pixels_to_frames(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, R, R) float in [-1, 1] -> (B, R, R, 3) uint8, rounded like diffusers' conversion."""
    x = ((pixels.detach().float().cpu().clamp(-1, 1) + 1.0) / 2.0 * 255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def train_steps(name: str, params: Iterable[torch.nn.Parameter], config: Any,
                step_loss: Callable[[int], torch.Tensor], log: Optional[LogFn], *,
                weight_decay: float = 0.01, max_grad_norm: Optional[float] = None) -> list[float]:
    """The stand-in pretrainers' loop: `config.steps` AdamW steps on `step_loss(step)`, the learning rate
    cosine-annealed to 0, progress logged every `config.log_every_s`; the step losses."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps))))
    losses: list[float] = []
    meter = ProgressMeter(name, config.steps, log, every_s=config.log_every_s, unit="steps")
    for step in range(config.steps):
        loss = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        meter.update(1, extra=f"loss {np.mean(losses[-20:]):.4f}")
    return losses


def train_autoencoder(vae: Any, frames: np.ndarray, config: AutoencoderTrainConfig, *,
                      log: Optional[LogFn] = None) -> list[float]:
    """Train `vae` in place on random crops of `frames` (N, R, R, 3) uint8, CPU or its device; the step losses."""
    if len(frames) == 0:
        raise ValueError("train_autoencoder: no frames")
    r, factor = frames.shape[1], 2 ** (len(vae.config.block_out_channels) - 1)
    if config.crop > r or config.crop % factor:
        raise ValueError(f"train_autoencoder: crop {config.crop} must be <= {r} and a multiple of "
                         f"the VAE's downsampling factor {factor}")
    device = next(vae.parameters()).device
    g = torch.Generator().manual_seed(config.seed)
    noise_g = torch.Generator(device=device).manual_seed(config.seed + 1)

    def step_loss(_step: int) -> torch.Tensor:
        idx = torch.randint(0, len(frames), (config.batch_size,), generator=g)
        i, j = torch.randint(0, r - config.crop + 1, (2,), generator=g).tolist()
        x = frames_to_pixels(frames[idx.numpy(), i:i + config.crop, j:j + config.crop]).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=noise_g)).sample          # (B, 3, c, c)
        return (F.mse_loss(recon, x) + config.l1_weight * F.l1_loss(recon, x)
                + config.kl_weight * posterior.kl().mean())

    vae.requires_grad_(True).train()
    losses = train_steps("autoencoder train", vae.parameters(), config, step_loss, log, weight_decay=0.0)
    vae.requires_grad_(False).eval()
    return losses


@torch.no_grad()
def latent_scaling_factor(vae: Any, frames: np.ndarray, batch_size: int = 64) -> float:
    """1 / std of the posterior means of `frames` (SD's `scaling_factor`, 0.18215 for its VAE)."""
    device = next(vae.parameters()).device
    means = [vae.encode(frames_to_pixels(frames[s:s + batch_size]).to(device)).latent_dist.mean
             .float().cpu() for s in range(0, len(frames), batch_size)]
    std = float(torch.cat(means).std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"latent_scaling_factor: latent std is {std}")
    return 1.0 / std


@torch.no_grad()
def roundtrip(vae: Any, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """decode(encode(x)) at the posterior mode: (B, R, R, 3) uint8 in, same out."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    out = []
    for s in range(0, len(frames), batch_size):
        x = frames_to_pixels(frames[s:s + batch_size]).to(device, dtype)
        out.append(pixels_to_frames(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    return np.concatenate(out)
