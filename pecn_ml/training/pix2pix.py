"""InstructPix2Pix fine-tuning, after the internals of diffusers'
`examples/instruct_pix2pix/train_instruct_pix2pix.py`, split into testable parts:

- `Pix2PixTrainConfig`: the run's parameters (defaults = the seed's table: 224 px, batch 4,
  accumulation 4, lr 5e-6, 40 epochs, FP16, validation every 10 epochs on 2 samples);
- `conditioning_dropout_masks`, `draw_sample_randomness`, `training_step`: one noise-prediction loss;
- `train_pix2pix`: the loop (accelerate for mixed precision and K-process data parallelism,
  accelerate's trackers: TensorBoard or MLflow, see `tracking.py`; rotating checkpoints and resume,
  validation grids, the final model: the UNet with a verified reference to a local base, else a
  full `save_pretrained` pipeline; see `pecn_ml.models.pix2pix`).

As in the example: frozen VAE and text encoder cast to the weight dtype, UNet master weights in
fp32 under autocast, DDPM noise from the folder's scheduler config, the target frame's latents
sampled from the VAE posterior, the input frame's taken at the mode, conditioning dropout of
paper §3.2.1. Deliberate differences: the empty-prompt embedding is computed once; the
randomness of each *sample* comes from a generator seeded by (run seed, epoch, dataset index), so a
resumed run repeats an uninterrupted one exactly and a sample draws the same noise whichever rank
or micro-batch it lands in; no seed means a random one, recorded in the checkpoints; latents and
prompt embeddings can be cached (`latent_cache.py`).

K processes (`torchrun --nproc_per_node K` / `accelerate launch --num_processes K`): the run is
defined by its global batch G = train_batch_size x K x gradient_accumulation_steps. Each optimizer
step takes the next G samples of the epoch's permutation (`GlobalBatchSampler`, sharded by
`accelerator.prepare`) and minimises their exact mean loss (gradient accumulation is done here, not
by accelerate); the last step of an epoch takes the n mod G samples left, weighted by their real
count. So K = 2 at batch b computes what K = 1 at batch 2b computes, up to float reduction order.
Only rank 0 writes (pipeline, loss curve, validation grids, trackers, the latent cache first);
checkpoints hold every rank's RNG file and are renamed into place by rank 0.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
import typing
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from pecn_ml.data.pairs import collate_pairs
from pecn_ml.models.pix2pix import (DEFAULT_PRETRAINED, TRAINED_PART, build_pipeline, encode_prompts,
                                    load_pix2pix_components, run_pipeline, write_base_ref)
from pecn_ml.model_cards import BaseWeights, CardContext, base_license, build_card, write_card
from pecn_ml.models.weights import is_local, weights_identity
from pecn_ml.training import pix2pix_checkpoints as ckpt
from pecn_ml.training.latent_cache import (LatentStore, PairLatents, encode_dataset,
                                           encode_pixels, sample_latents)
from pecn_ml.training.tracking import (TrackingConfig, TrackingInfo, accelerator_kwargs, log_image,
                                       start_tracking, tag_run)
from pecn_ml.utils.files import (atomic_dir, atomic_path, folder_manifest, manifest_sha256, sha256_file,
                                 sha256_json)
from pecn_ml.utils.accel import (MIXED_PRECISION, GlobalBatchSampler, MixedPrecision, SlotDataset,
                                 broadcast_object, collate_slots, launched_rank, make_accelerator, reduce_sum,
                                 slot_indices, slot_weights)
from pecn_ml.utils.progress import ProgressMeter

LogFn = Callable[[str], None]
# diffusers.optimization.get_scheduler names that need no more than warmup and total steps
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
LR_SCHEDULERS: tuple[str, ...] = typing.get_args(LrScheduler)
TargetLatents = Literal["sample", "mode"]
TARGET_LATENTS: tuple[str, ...] = typing.get_args(TargetLatents)
# what the diffused (clean) latents are: "frame", the target frame's (the seed's, InstructPix2Pix's),
# or "change", the target frame's minus the input frame's (both scaled): a model that predicts no
# change reproduces the input exactly, as latent copy does. A property of the base model
# (`pecn_ml.models.pix2pix.latent_target`), not of a fine-tuning run.
LatentTarget = Literal["frame", "change"]
LATENT_TARGETS: tuple[str, ...] = typing.get_args(LatentTarget)


@dataclass(frozen=True)
class Pix2PixTrainConfig:
    """Parameters of one InstructPix2Pix fine-tuning run (defaults: the seed's experiments)."""

    resolution: int = 224
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    learning_rate: float = 5e-6
    num_train_epochs: int = 40
    max_train_steps: Optional[int] = None          # optimizer steps; overrides num_train_epochs
    lr_scheduler: LrScheduler = "constant"         # a diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    conditioning_dropout_prob: float = 0.05
    # timesteps are drawn uniformly from [min_timestep, num_train_timesteps) (the seed's: 0). The
    # demo samples with one DDIM step at the last timestep, so it trains where it samples.
    min_timestep: int = 0
    # the target frame's latents: "sample", a posterior sample per step (the seed's and diffusers'
    # script), or "mode", the posterior mean (the demo: its small VAE's posterior noise, std 0.17
    # against latents of std 1.25, is noise in the very target a copy-level model must reproduce)
    target_latents: TargetLatents = "sample"
    mixed_precision: MixedPrecision = "fp16"       # "no" | "fp16" | "bf16"; fp16 -> "no" off CUDA
    seed: Optional[int] = 42                       # None: a random seed, kept in checkpoints
    cache_latents: bool = True                     # encode frames/prompts once (exact, see latent_cache)
    latent_cache_dir: Optional[str] = None         # shared folder; None: {out_dir}/latent_cache
    encode_batch_size: int = 16
    dataloader_num_workers: int = 0
    gradient_checkpointing: bool = False
    allow_tf32: bool = True
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = 2
    validation_epochs: int = 10
    num_validation_samples: int = 2
    validation_inference_steps: int = 20
    validation_guidance_scale: float = 7.0
    validation_image_guidance_scale: float = 1.5
    force_cpu: bool = False
    torch_threads: Optional[int] = None            # CPU threads while training (None: torch's)
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        checks = [
            (self.resolution > 0 and self.resolution % 8 == 0, "resolution must be a positive multiple of 8"),
            (self.train_batch_size >= 1, "train_batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.num_train_epochs >= 1, "num_train_epochs must be >= 1"),
            (self.max_train_steps is None or self.max_train_steps >= 1, "max_train_steps must be >= 1"),
            (0 <= self.conditioning_dropout_prob <= 1 / 3, "conditioning_dropout_prob must be in [0, 1/3]"),
            (self.min_timestep >= 0, "min_timestep must be >= 0"),
            (self.target_latents in TARGET_LATENTS, f"target_latents must be one of {TARGET_LATENTS}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
            (self.lr_scheduler in LR_SCHEDULERS, f"lr_scheduler must be one of {LR_SCHEDULERS}"),
            (self.checkpointing_steps >= 1, "checkpointing_steps must be >= 1"),
            (self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1,
             "checkpoints_total_limit must be >= 1 or None"),
            (self.validation_epochs >= 1, "validation_epochs must be >= 1"),
            (self.num_validation_samples >= 0, "num_validation_samples must be >= 0"),
            (self.torch_threads is None or self.torch_threads >= 1, "torch_threads must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Pix2PixTrainConfig: {message}")

    @classmethod
    def demo(cls, **overrides: Any) -> "Pix2PixTrainConfig":
        """Sized for the demo's stand-in (instruct-pretrained) at 96 px on 240 training videos: 5
        epochs of 60 micro-batches, 150 optimizer steps at lr 1e-3, cosine-annealed (measured on the
        demo data, SSIM / autoencoder ceiling, next1 | next5: constant 1e-4 gave 0.945 | 0.888,
        constant 1e-3 0.912 | 0.938, cosine from 1e-3 0.972 | 0.922); about 30 s per variant.
        Now 4 epochs (120 steps) to fit the demo's time budget; the README has the measured result.
        Share `latent_cache_dir` between the variants so frame 20 and the prompts are encoded once."""
        values: dict[str, Any] = dict(
            resolution=96, train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-3, lr_scheduler="cosine",
            num_train_epochs=4, mixed_precision="no", seed=0, checkpointing_steps=50,
            checkpoints_total_limit=1, validation_epochs=4, num_validation_samples=2,
            validation_inference_steps=8, log_every_s=5.0)
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class Pix2PixTrainResult:
    """What a run produced; paths are inside `out_dir`."""

    final_loss: float              # mean loss of the last epoch's worth of optimizer steps
    steps: int                     # optimizer steps done (accumulation respected)
    epochs: int
    loss_curve: list[float]        # one value per optimizer step (mean over its global batch)
    model_dir: Path                # the final model: UNet + base.json (local base) or a full pipeline
    unet_sha256: str               # of model_dir/unet/diffusion_pytorch_model.safetensors
    validation_grid: Optional[Path]  # Input | GT | Output PNG of the last validation
    loss_curve_png: Path
    tensorboard_dir: Path
    resumed_from_step: Optional[int] = None
    seconds: float = 0.0
    latent_cache: dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None     # the base seed the run trained with (config's, resumed or random)
    first_loss: float = float("nan")   # mean loss of the first `loss_window` optimizer steps
    loss_window: int = 0           # an epoch's worth of steps, at most half of all steps
    tracking: Optional[TrackingInfo] = None   # where the run logged (TensorBoard folder / MLflow run)
    num_processes: int = 1         # K data-parallel processes
    global_batch_size: int = 0     # train_batch_size x K x gradient_accumulation_steps
    seconds_per_step: float = float("nan")   # optimizer steps of this call only (the first, warm-up,
                                             # left out when there are more); no load, cache, save
    checkpoint_sha256: str = ""    # of model_dir's manifest: every file the pipeline loads (the handle's sha)
    checkpoint_files: dict = field(default_factory=dict)   # that manifest: relative path -> sha256


# --- one step --------------------------------------------------------------------------------

@dataclass
class LatentBatch:
    """The encoded conditioning and target of one micro-batch, on the training device."""

    target_mean: torch.Tensor    # (B, 4, h, w) VAE posterior mean of the target frame
    target_logvar: torch.Tensor  # (B, 4, h, w)
    image_latents: torch.Tensor  # (B, 4, h, w) posterior mode of the input frame (unscaled)
    prompt_embeds: torch.Tensor  # (B, L, D)


@dataclass
class StepDraws:
    """All the randomness of one micro-batch."""

    latent_eps: torch.Tensor  # (B, 4, h, w) for the posterior sample of the target latents
    noise: torch.Tensor       # (B, 4, h, w) diffusion noise
    timesteps: torch.Tensor   # (B,) long
    dropout_u: torch.Tensor   # (B,) uniform draws of the conditioning dropout


def step_generator(base_seed: int, micro_index: int, device: torch.device) -> torch.Generator:
    """A generator that is a pure function of (seed, index) (instruct pretraining's steps)."""
    seed = (int(base_seed) * 1_000_003 + int(micro_index)) % (2 ** 63)
    return torch.Generator(device=device).manual_seed(seed)


def sample_generator(base_seed: int, epoch: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of dataset item `index` in `epoch`: a pure function of (seed, epoch, index)."""
    seed = ((int(base_seed) * 1_000_003 + int(epoch)) * 1_000_003 + int(index)) % (2 ** 63)
    return torch.Generator(device=device).manual_seed(seed)


def draw_step_randomness(latent_shape: Sequence[int], num_train_timesteps: int, *,
                         generator: torch.Generator, dtype: torch.dtype,
                         device: torch.device, min_timestep: int = 0) -> StepDraws:
    """Draw eps, noise, timesteps (uniform in [min_timestep, num_train_timesteps)) and the dropout
    uniforms, in that order, from `generator`."""
    if not 0 <= min_timestep < num_train_timesteps:
        raise ValueError(f"min_timestep {min_timestep} is outside the scheduler's "
                         f"{num_train_timesteps} training timesteps")
    b = latent_shape[0]
    eps = torch.randn(tuple(latent_shape), generator=generator, device=device, dtype=dtype)
    noise = torch.randn(tuple(latent_shape), generator=generator, device=device, dtype=dtype)
    timesteps = torch.randint(min_timestep, num_train_timesteps, (b,), generator=generator, device=device)
    u = torch.rand(b, generator=generator, device=device)
    return StepDraws(eps, noise, timesteps.long(), u)


def draw_sample_randomness(latent_shape: Sequence[int], num_train_timesteps: int, *,
                           base_seed: int, epoch: int, indices: Sequence[int],
                           dtype: torch.dtype, device: torch.device, min_timestep: int = 0) -> StepDraws:
    """The draws of a micro-batch, sample by sample: row i comes from
    `sample_generator(base_seed, epoch, indices[i])`, so it does not depend on the batch (its size,
    its other samples, the rank it runs on)."""
    assert len(indices) == latent_shape[0], (len(indices), tuple(latent_shape))
    rows = [draw_step_randomness((1, *latent_shape[1:]), num_train_timesteps,
                                 generator=sample_generator(base_seed, epoch, int(i), device),
                                 dtype=dtype, device=device, min_timestep=min_timestep) for i in indices]
    return StepDraws(torch.cat([r.latent_eps for r in rows]), torch.cat([r.noise for r in rows]),
                     torch.cat([r.timesteps for r in rows]), torch.cat([r.dropout_u for r in rows]))


def conditioning_dropout_masks(u: torch.Tensor, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_prompt, drop_image) bool masks (B,) from one uniform draw per sample (paper §3.2.1).

    u < p: prompt only; p <= u < 2p: both; 2p <= u < 3p: image only -- each with probability p,
    as in the diffusers example.
    """
    assert u.ndim == 1, f"expected (B,) uniforms, got {tuple(u.shape)}"
    drop_prompt = u < 2 * prob
    drop_image = (u >= prob) & (u < 3 * prob)
    return drop_prompt, drop_image


def training_step(unet: Any, noise_scheduler: Any, batch: LatentBatch, draws: StepDraws, *,
                  empty_prompt_embeds: torch.Tensor, conditioning_dropout_prob: float,
                  scaling_factor: float, reduction: str = "mean", target_latents: str = "sample",
                  latent_target: str = "frame") -> torch.Tensor:
    """The noise-prediction loss of one micro-batch (forward only; the loop does backward):
    a scalar (`reduction="mean"`) or one loss per sample, (B,) (`reduction="none"`).

    `empty_prompt_embeds` (1, L, D) is the embedding of "" (computed once by the caller).
    `target_latents`: "sample" (the posterior sample `draws.latent_eps` picks) or "mode" (its mean;
    the draw is made all the same, so a run's other random numbers do not depend on the choice).
    `latent_target`: "frame" (the target frame's latents are diffused) or "change" (the target's
    minus the input's, both scaled by `scaling_factor`; `LATENT_TARGETS`).
    """
    b = batch.target_mean.shape[0]
    assert batch.image_latents.shape == batch.target_mean.shape, "input/target latent shapes differ"
    assert batch.prompt_embeds.shape[0] == b and draws.timesteps.shape == (b,), "batch sizes differ"
    if target_latents not in TARGET_LATENTS:
        raise ValueError(f"target_latents must be one of {TARGET_LATENTS}, got {target_latents!r}")
    if latent_target not in LATENT_TARGETS:
        raise ValueError(f"latent_target must be one of {LATENT_TARGETS}, got {latent_target!r}")
    latents = (batch.target_mean if target_latents == "mode"
               else sample_latents(batch.target_mean, batch.target_logvar, draws.latent_eps)) * scaling_factor
    if latent_target == "change":                                          # (B, 4, h, w)
        latents = latents - batch.image_latents * scaling_factor
    noisy = noise_scheduler.add_noise(latents, draws.noise, draws.timesteps)  # (B, 4, h, w)
    hidden, image = batch.prompt_embeds, batch.image_latents
    if conditioning_dropout_prob > 0:
        drop_prompt, drop_image = conditioning_dropout_masks(draws.dropout_u, conditioning_dropout_prob)
        empty = empty_prompt_embeds.to(hidden.dtype).expand_as(hidden)       # (B, L, D)
        hidden = torch.where(drop_prompt[:, None, None], empty, hidden)
        image = image * (~drop_image).to(image.dtype)[:, None, None, None]
    model_input = torch.cat([noisy, image], dim=1)                          # (B, 8, h, w)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = draws.noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, draws.noise, draws.timesteps)
    elif prediction_type == "sample":                                      # the clean latents (x0)
        target = latents
    else:
        raise ValueError(f"unknown prediction type {prediction_type!r}")
    pred = unet(model_input, draws.timesteps, hidden).sample                # (B, 4, h, w)
    if reduction == "none":
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


def encode_pair_batch(vae: Any, tokenizer: Any, text_encoder: Any, batch: dict[str, Any]
                      ) -> LatentBatch:
    """Encode a collated `FramePairDataset` batch (the uncached path)."""
    b = batch["input"].shape[0]
    mean, logvar = encode_pixels(vae, torch.cat([batch["target"], batch["input"]]))  # (2B, 4, h, w)
    embeds = encode_prompts(tokenizer, text_encoder, batch["prompt"])               # (B, L, D)
    return LatentBatch(mean[:b], logvar[:b], mean[b:], embeds)


def cached_pair_batch(latents: PairLatents, index: torch.Tensor, device: torch.device) -> LatentBatch:
    """Gather micro-batch `index` (B,) from cached latents and move it to `device`."""
    index = index.cpu()
    prompt_rows = latents.prompt_index[index]
    return LatentBatch(latents.target_mean[index].to(device, non_blocking=True),
                       latents.target_logvar[index].to(device, non_blocking=True),
                       latents.image_latents[index].to(device, non_blocking=True),
                       latents.prompt_embeds[prompt_rows].to(device, non_blocking=True))


# --- data order -------------------------------------------------------------------------------

class EpochShuffleSampler(Sampler[int]):
    """A permutation per epoch, a pure function of (seed, epoch): resumable without RNG state.
    (The loop cuts it into global batches with `GlobalBatchSampler`.)"""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed((self.seed * 7919 + self.epoch) % (2 ** 63))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n

    def order(self, epoch: int) -> list[int]:
        """The permutation of `epoch`."""
        self.set_epoch(epoch)
        return list(self)


class _IndexDataset(Dataset):
    """Items are their own indices (the cached path gathers tensors per batch)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate_index(items: list[int]) -> torch.Tensor:
    return torch.tensor(items, dtype=torch.long)


# --- images -----------------------------------------------------------------------------------

def _text_width(draw: Any, text: str) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text)
    return right - left


def make_grid(rows: Sequence[Sequence[np.ndarray]], headers: Sequence[str] = ("Input", "GT", "Output"),
              captions: Optional[Sequence[str]] = None, pad: int = 4) -> Any:
    """A PIL image: one row per sample of (R, R, 3) uint8 images, headed by `headers`."""
    from PIL import Image, ImageDraw

    assert rows and all(len(r) == len(headers) for r in rows), "each row needs one image per header"
    r = rows[0][0].shape[0]
    head, cap = 14, (12 if captions else 0)
    w = len(headers) * (r + pad) + pad
    h = head + len(rows) * (r + cap + pad) + pad
    grid = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(headers):
        x = pad + j * (r + pad)
        draw.text((x + max(0, (r - _text_width(draw, name)) // 2), 1), name, fill=(0, 0, 0))
    for i, images in enumerate(rows):
        y = head + i * (r + cap + pad)
        for j, img in enumerate(images):
            grid.paste(Image.fromarray(img), (pad + j * (r + pad), y))
        if captions:
            draw.text((pad, y + r), captions[i][: max(8, w // 6)], fill=(60, 60, 60))
    return grid


def plot_loss_curve(losses: Sequence[float], path: str | Path, title: str = "train loss",
                    size: tuple[int, int] = (640, 360)) -> Path:
    """Draw the loss per optimizer step (and a moving average) as a PNG, with PIL only."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 60, 15, 25, 35
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((left, 6), title, fill=(0, 0, 0))
    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    vals = [float(v) for v in losses if math.isfinite(v)]
    if vals:
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1e-8
        n = len(losses)

        def xy(i: int, v: float) -> tuple[float, float]:
            x = left + (w - right - left) * (i / max(1, n - 1))
            y = (h - bottom) - (h - bottom - top) * ((v - lo) / (hi - lo))
            return x, y

        pts = [xy(i, v) for i, v in enumerate(losses) if math.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=(150, 170, 220), width=1)
        k = max(1, n // 20)
        avg = [float(np.mean(vals[max(0, i - k + 1): i + 1])) for i in range(len(vals))]
        if len(avg) > 1:
            d.line([xy(i, v) for i, v in enumerate(avg)], fill=(20, 60, 200), width=2)
        for v in (lo, hi):
            d.text((4, xy(0, v)[1] - 6), f"{v:.4g}", fill=(0, 0, 0))
        d.text((left, h - bottom + 4), "0", fill=(0, 0, 0))
        d.text((w - right - 40, h - bottom + 4), f"{n} steps", fill=(0, 0, 0))
    else:
        d.text((left + 10, top + 10), "no steps", fill=(0, 0, 0))
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


@torch.no_grad()
def render_validation(pipe: Any, dataset: Any, n: int, *, steps: int, guidance_scale: float,
                      image_guidance_scale: float, seed: int, device: torch.device,
                      autocast_dtype: Optional[torch.dtype], latent_target: str = "frame") -> Any:
    """Run the pipeline on the first `n` pairs of `dataset`; a PIL Input | GT | Output grid."""
    from PIL import Image

    n = min(n, len(dataset))
    assert n > 0, "render_validation: empty validation dataset"
    pairs = [dataset.frames_uint8(i) for i in range(n)]
    prompts = [dataset.prompts[i] for i in range(n)]
    generator = torch.Generator(device=device).manual_seed(int(seed) % (2 ** 63))
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with amp:
        out = run_pipeline(pipe, prompts, [Image.fromarray(p[0]) for p in pairs], latent_target=latent_target,
                           num_inference_steps=steps, guidance_scale=guidance_scale,
                           image_guidance_scale=image_guidance_scale, generator=generator)  # (n, R, R, 3) in [0, 1]
    outputs = [(np.clip(o, 0, 1) * 255).round().astype(np.uint8) for o in out]
    return make_grid([[p[0], p[1], o] for p, o in zip(pairs, outputs)],
                     captions=[dataset.video_ids[i] for i in range(n)])


# --- the loop ---------------------------------------------------------------------------------

_FINGERPRINT_FIELDS = ("resolution", "learning_rate", "lr_scheduler", "lr_warmup_steps",
                       "conditioning_dropout_prob", "mixed_precision", "seed", "adam_weight_decay",
                       "max_grad_norm")
RANDOMNESS = "per-sample(seed, epoch, index)"  # in the fingerprint: older checkpoints drew per micro-batch


def _fingerprint(config: Pix2PixTrainConfig, pretrained: str, dataset: Any,
                 max_train_steps: int, num_processes: int = 1) -> dict[str, Any]:
    """What decides the run's result; a checkpoint with another fingerprint is not resumed. The
    pretrained model counts by its weights' sha (a hub id by its name), not by its folder; the batch
    by its global size (per-rank batch x K x accumulation), so K = 2 at batch 1 and K = 1 at
    batch 2 are the same run and resume each other's checkpoints."""
    return {**{k: getattr(config, k) for k in _FINGERPRINT_FIELDS},
            "global_batch_size": (config.train_batch_size * num_processes
                                  * config.gradient_accumulation_steps),
            "randomness": RANDOMNESS,
            "pretrained": weights_identity(pretrained),
            "pairs": sha256_json([list(dataset.video_ids), list(dataset.prompts),
                                  dataset.input_idx, dataset.target_idx]),
            "max_train_steps": max_train_steps,
            # only when set, so checkpoints written before the field existed still resume
            **({"min_timestep": config.min_timestep} if config.min_timestep else {})}


def _checkpoint_to_resume(out_dir: Path, fingerprint: dict[str, Any], resume: bool, log: LogFn
                          ) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """The latest checkpoint in `out_dir` and its training state when it is of this same run
    (equal fingerprint); else (None, None). Reads only: the caller (rank 0) deletes every
    checkpoint when this returns None, so nothing of another run (its seed included) carries over."""
    latest = ckpt.latest_checkpoint(out_dir) if resume else None
    if latest is None:
        return None, None
    prior = ckpt.read_training_state(latest)
    diff = sorted(k for k, v in fingerprint.items() if prior["fingerprint"].get(k) != v)
    if diff:  # another config, data or model: its checkpoints cannot continue this run
        log(f"{latest}: checkpoint is of another run (differs in {diff}); starting over")
        return None, None
    return latest, prior


def _resolve_mixed_precision(config: Pix2PixTrainConfig, log: LogFn) -> str:
    mp = config.mixed_precision
    if mp == "fp16" and (config.force_cpu or not torch.cuda.is_available()):
        log("mixed_precision fp16 needs CUDA; training in fp32 on this machine")
        return "no"
    return mp


def _make_accelerator(config: Pix2PixTrainConfig, log: LogFn, **tracker_kwargs: Any) -> Any:
    """An Accelerator for this run (with its trackers). Gradient accumulation is the loop's own
    (exact global-batch means), so accelerate's stays at 1."""
    return make_accelerator(mixed_precision=_resolve_mixed_precision(config, log),
                            cpu=config.force_cpu, **tracker_kwargs)


def _save_final_pipeline(pretrained: str, unet: Any, model_dir: Path, card: Any = None) -> Path:
    """The fine-tuned model and its model card (`card`, a `ModelCard`), written beside `model_dir`
    and renamed onto it: for a local base folder the light layout (the trained UNet and
    `base.json`, a verified reference to the base's frozen parts; see `pecn_ml.models.pix2pix`),
    for a hub base a full `save_pretrained` pipeline (the trained UNet and the fp32 frozen parts)."""
    with atomic_dir(model_dir) as tmp:
        if is_local(str(pretrained)):
            unet.save_pretrained(tmp / TRAINED_PART)
            write_base_ref(tmp, pretrained, model_dir)
        else:
            build_pipeline(pretrained, unet=unet).save_pretrained(tmp)
        if card is not None:
            write_card(tmp, card)
    return model_dir


def model_card(config: Pix2PixTrainConfig, pretrained: str, dataset: Any, fingerprint: dict[str, Any],
               seed: int, loss_summary: dict[str, Any], context: Optional[CardContext] = None) -> Any:
    """The card of a fine-tuned pipeline folder: what the trainer knows (config, seed, losses, the
    pairs' sha, the prompt form) and the caller's `context` (run id, data versions, the base's
    revision and license, the variant); without a context the base is named by the trainer's identity."""
    context = context or CardContext()
    if not context.bases:
        identity = str(fingerprint["pretrained"])
        context = replace(context, bases=(BaseWeights(
            role="pix2pix_base", name=pretrained,
            sha256=identity.removeprefix("sha256:") if identity.startswith("sha256:") else "",
            license=base_license(pretrained if is_local(pretrained) else None, pretrained)),))
    context = replace(context, data_versions={**context.data_versions, "train_pairs_sha256": fingerprint["pairs"]})
    prompts = list(getattr(dataset, "prompts", []))
    return build_card(
        title="InstructPix2Pix fine-tuned for future-frame prediction", kind="instruct-pix2pix",
        library_name="diffusers",
        description=("Given frame `input_idx` of a video and a prompt naming the action (and, in progress "
                     "variants, how much of it is done), predicts frame `target_idx`. A "
                     "`StableDiffusionInstructPix2PixPipeline`: `pecn_ml.sampling.load_pipeline` loads it (a "
                     "full pipeline folder, or the fine-tuned `unet/` with `base.json`, a verified reference to "
                     "the frozen parts of its base)."),
        context=context, training_config=asdict(config), seed=seed, loss_summary=loss_summary,
        extra={"input_idx": getattr(dataset, "input_idx", None), "target_idx": getattr(dataset, "target_idx", None),
               "prompt_example": prompts[0] if prompts else ""})


def _make_loader(config: Pix2PixTrainConfig, dataset: Any, parts: Any, out_dir: Path,
                 base_seed: int, accelerator: Any, log: LogFn
                 ) -> tuple[DataLoader, GlobalBatchSampler, Optional[PairLatents], dict[str, Any]]:
    """The micro-batch loader (not yet prepared): (slots, dataset indices into cached latents) or
    (slots, collated pixel pairs), in global batches of the epoch's permutation. Rank 0 encodes
    missing latents first; the other ranks then read its shards (one writer per cache folder)."""
    info: dict[str, Any] = {"enabled": config.cache_latents}
    cached: Optional[PairLatents] = None
    if config.cache_latents:
        t0 = time.perf_counter()
        store = LatentStore(config.latent_cache_dir or out_dir / "latent_cache", parts.vae,
                            parts.tokenizer, parts.text_encoder, batch_size=config.encode_batch_size,
                            log=log)
        with accelerator.main_process_first():
            cached = encode_dataset(store, dataset)
        info.update(dir=str(store.root), seconds=round(time.perf_counter() - t0, 3),
                    encoded=dict(store.encoded), loaded=dict(store.loaded),
                    megabytes=round(cached.nbytes() / 2 ** 20, 2))
        log(f"latent cache: {info}")
        data, collate = SlotDataset(_IndexDataset(len(dataset))), collate_slots(_collate_index)
    else:
        data, collate = SlotDataset(dataset), collate_slots(collate_pairs)
    sampler = GlobalBatchSampler(EpochShuffleSampler(len(dataset), base_seed).order, len(dataset),
                                 config.train_batch_size, accelerator.num_processes,
                                 config.gradient_accumulation_steps)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate,
                        num_workers=config.dataloader_num_workers,
                        pin_memory=accelerator.device.type == "cuda")
    return loader, sampler, cached, info


@dataclass
class _Run:
    """What one training run's step functions share (built once by `_train`)."""

    config: Pix2PixTrainConfig
    accelerator: Any
    unet: Any
    optimizer: Any
    lr_scheduler: Any
    loader: Any
    sampler: GlobalBatchSampler
    parts: Any
    cached: Optional[PairLatents]
    empty_prompt_embeds: torch.Tensor  # (1, L, D)
    base_seed: int
    n: int                             # training pairs

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def _micro_loss_sum(run: _Run, slots: torch.Tensor, data: Any, epoch: int) -> torch.Tensor:
    """sum_i w_i * loss_i over this rank's micro-batch (w: `slot_weights`), a scalar with grad."""
    slots = slots.cpu()
    index = slot_indices(slots, run.n)                                       # (B,)
    p = run.parts
    if run.cached is not None:
        inputs = cached_pair_batch(run.cached, index, run.device)
    else:
        inputs = encode_pair_batch(p.vae, p.tokenizer, p.text_encoder, data)
    draws = draw_sample_randomness(inputs.target_mean.shape, p.noise_scheduler.config.num_train_timesteps,
                                   base_seed=run.base_seed, epoch=epoch, indices=index.tolist(),
                                   dtype=inputs.target_mean.dtype, device=run.device,
                                   min_timestep=run.config.min_timestep)
    losses = training_step(run.unet, p.noise_scheduler, inputs, draws,
                           empty_prompt_embeds=run.empty_prompt_embeds,
                           conditioning_dropout_prob=run.config.conditioning_dropout_prob,
                           scaling_factor=float(p.vae.config.scaling_factor), reduction="none",
                           target_latents=run.config.target_latents, latent_target=p.latent_target)  # (B,)
    weights = slot_weights(slots, run.n, run.accelerator.num_processes).to(run.device)
    return (losses * weights).sum()


def _optimizer_step(run: _Run, batches: Any, samples: int, micros: int, epoch: int) -> float:
    """One optimizer step over a global batch of `samples` (this rank: `micros` micro-batches);
    returns its mean loss over all ranks. Each rank backpropagates sum(w * loss) * K / samples, so
    DDP's gradient mean is the gradient of the global batch's mean loss."""
    acc, k = run.accelerator, run.accelerator.num_processes
    local = 0.0
    for m in range(micros):
        slots, data = next(batches)
        sync = contextlib.nullcontext() if m == micros - 1 else acc.no_sync(run.unet)
        with sync:
            part = _micro_loss_sum(run, slots, data, epoch)
            acc.backward(part * k / samples)
        local += float(part.detach())
    acc.clip_grad_norm_(run.unet.parameters(), run.config.max_grad_norm)
    run.optimizer.step()
    if not acc.optimizer_step_was_skipped:
        run.lr_scheduler.step()
    run.optimizer.zero_grad()
    return reduce_sum(acc, local) / samples


def _train_epoch(run: _Run, epoch: int, skip_steps: int, global_step: int, max_steps: int,
                 after_step: Callable[[int, float], None]) -> int:
    """The optimizer steps of `epoch` from step `skip_steps` on (resume); returns the global step."""
    run.unet.train()
    run.sampler.set_epoch(epoch)
    run.sampler.skip_steps = skip_steps
    run.loader.set_epoch(epoch)
    batches = iter(run.loader)
    for samples, micros in run.sampler.step_sizes():
        loss = _optimizer_step(run, batches, samples, micros, epoch)
        global_step += 1
        after_step(global_step, loss)
        if global_step >= max_steps:
            return global_step
    assert next(batches, None) is None, "loader yielded more micro-batches than its plan"
    return global_step


def _validate(run: _Run, pretrained: str, val_dataset: Any, out_dir: Path, tag: str,
              step: int, autocast_dtype: Optional[torch.dtype], log: LogFn) -> Optional[Path]:
    """Rank 0 samples a validation grid (no collective op inside); every rank returns its path."""
    cfg = run.config
    if val_dataset is None or len(val_dataset) == 0 or cfg.num_validation_samples == 0:
        return None
    path = out_dir / "validation" / f"{tag}.png"
    if not run.accelerator.is_main_process:
        return path
    model = run.accelerator.unwrap_model(run.unet)
    model.eval()
    p = run.parts
    pipe = build_pipeline(pretrained, unet=model, vae=p.vae, text_encoder=p.text_encoder,
                          tokenizer=p.tokenizer)
    grid = render_validation(pipe, val_dataset, cfg.num_validation_samples,
                             steps=cfg.validation_inference_steps,
                             guidance_scale=cfg.validation_guidance_scale,
                             image_guidance_scale=cfg.validation_image_guidance_scale,
                             seed=run.base_seed, device=run.device, autocast_dtype=autocast_dtype,
                             latent_target=p.latent_target)
    model.train()
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    log_image(run.accelerator, "validation", np.asarray(grid), step)
    log(f"validation grid {path}")
    return path


def train_pix2pix(pretrained: str | Path, train_dataset: Any, config: Pix2PixTrainConfig,
                  out_dir: str | Path, *, val_dataset: Any = None, log: Optional[LogFn] = None,
                  resume: bool = True, tracking: Optional[TrackingConfig] = None,
                  card: Optional[CardContext] = None) -> Pix2PixTrainResult:
    """Fine-tune InstructPix2Pix on a `FramePairDataset`; write checkpoints, tracker logs,
    validation grids and the final pipeline (`{out_dir}/model`) under `out_dir`.

    `pretrained`: an InstructPix2Pix folder or hub name (default `timbrooks/instruct-pix2pix`), or
    a Stable Diffusion one (its UNet is widened). `resume=True` continues from the latest complete
    checkpoint in `out_dir` when it is of the same run (config with the same global batch,
    pretrained model, pairs and prompts); a checkpoint of another run is logged, deleted and
    training starts over. `resume=False` deletes old checkpoints and starts over.
    `config.torch_threads` sets torch's CPU threads for the run (restored afterwards): on a
    shared machine one thread per run avoids OpenMP threads spinning against each other.
    `tracking`: where to log (default: TensorBoard in `{out_dir}/tensorboard`); the config, seed
    and tags are the run's hyper-parameters, the final checkpoint's sha256 (of its manifest, every
    file of `{out_dir}/model` but the card) is added as a tag.
    `{out_dir}/model` holds a model card (README.md, see `model_card`); `card` adds what the caller
    knows (Dagster run id, data versions, the base's revision and license, variant and prompt form).
    Under `torchrun`/`accelerate launch` every rank calls this with the same arguments; all ranks
    return the same result (`log` is called on rank 0 only), rank 0 writes the files.
    """
    threads = torch.get_num_threads()
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    try:
        return _train(pretrained, train_dataset, config, out_dir, val_dataset=val_dataset,
                      log=log, resume=resume, tracking=tracking, card=card)
    finally:
        torch.set_num_threads(threads)


def _setup(pretrained: str, train_dataset: Any, config: Pix2PixTrainConfig, out_dir: Path,
           accelerator: Any, base_seed: int, log: LogFn) -> tuple[_Run, dict[str, Any]]:
    """Load the model parts, encode or load the latents, build and prepare UNet, optimizer, loader."""
    from diffusers.optimization import get_scheduler

    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision,
                                                                        torch.float32)
    if config.allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    ckpt.register_unet_hooks(accelerator)
    parts = load_pix2pix_components(pretrained)
    if parts.widened:
        log(f"{pretrained}: 4-channel UNet widened to 8 input channels (new weights zero)")
    if config.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
    for frozen in (parts.vae, parts.text_encoder):  # inference only: cast like the example
        frozen.to(device)
        if weight_dtype != torch.float32:
            frozen.to(dtype=weight_dtype)
        frozen.eval()
    parts.unet.train()
    empty = encode_prompts(parts.tokenizer, parts.text_encoder, [""])        # (1, L, D), once
    loader, sampler, cached, cache_info = _make_loader(config, train_dataset, parts, out_dir,
                                                       base_seed, accelerator, log)
    optimizer = torch.optim.AdamW(parts.unet.parameters(), lr=config.learning_rate,
                                  betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    max_steps = _max_steps(config, len(train_dataset), accelerator.num_processes)
    # Not prepared: accelerate would step it K times per step; stepped once per optimizer step here.
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps, num_training_steps=max_steps)
    unet, optimizer, loader = accelerator.prepare(parts.unet, optimizer, loader)
    accelerator.register_for_checkpointing(lr_scheduler)
    run = _Run(config, accelerator, unet, optimizer, lr_scheduler, loader, sampler, parts, cached,
               empty, base_seed, len(train_dataset))
    return run, cache_info


def _max_steps(config: Pix2PixTrainConfig, n: int, num_processes: int) -> int:
    per_epoch = math.ceil(n / (config.train_batch_size * num_processes
                               * config.gradient_accumulation_steps))
    return config.max_train_steps or config.num_train_epochs * per_epoch


def _train(pretrained: str | Path, train_dataset: Any, config: Pix2PixTrainConfig,
           out_dir: str | Path, *, val_dataset: Any, log: Optional[LogFn],
           resume: bool, tracking: Optional[TrackingConfig], card: Optional[CardContext]) -> Pix2PixTrainResult:
    t0 = time.perf_counter()
    noop: LogFn = lambda _msg: None  # noqa: E731
    log = (log or noop) if launched_rank() == 0 else noop
    pretrained = str(pretrained or DEFAULT_PRETRAINED)
    if len(train_dataset) == 0:
        raise ValueError("train_pix2pix: the training dataset is empty")
    for name, ds in (("training", train_dataset), ("validation", val_dataset)):
        if ds is not None and ds.resolution != config.resolution:
            raise ValueError(f"train_pix2pix: {name} frames are {ds.resolution} px but "
                             f"config.resolution is {config.resolution}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tb_dir = out_dir / "tensorboard"
    accelerator = _make_accelerator(config, log, **accelerator_kwargs(tracking, out_dir, tb_dir.name))
    k = accelerator.num_processes
    global_batch = config.train_batch_size * k * config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(train_dataset) / global_batch)
    max_steps = _max_steps(config, len(train_dataset), k)
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    fingerprint = _fingerprint(config, pretrained, train_dataset, max_steps, k)
    # Decided before the seed: only a checkpoint of this same run lends its seed to the run.
    resume_from, prior = _checkpoint_to_resume(out_dir, fingerprint, resume, log)
    accelerator.wait_for_everyone()          # every rank has read the checkpoints ...
    if resume_from is None and accelerator.is_main_process:
        ckpt.clear_checkpoints(out_dir)      # ... before rank 0 deletes them
    base_seed = (prior["base_seed"] if prior else config.seed if config.seed is not None
                 else broadcast_object(accelerator, secrets.randbits(62)))

    run, cache_info = _setup(pretrained, train_dataset, config, out_dir, accelerator, base_seed, log)
    global_step, loss_curve, resumed_step = 0, [], None
    if resume_from is not None:
        ckpt.load_checkpoint(accelerator, resume_from)
        global_step = resumed_step = int(prior["global_step"])
        loss_curve = [float(v) for v in prior["loss_curve"]]
        log(f"resumed from {resume_from} (step {global_step}/{max_steps})")
    first_epoch = global_step // steps_per_epoch

    tracker_config = {**asdict(config), "base_seed": base_seed, "max_train_steps_resolved": max_steps,
                      "pretrained": fingerprint["pretrained"], "pairs_sha256": fingerprint["pairs"],
                      "train_pairs": len(train_dataset), "num_processes": k,
                      "global_batch_size": global_batch}
    tracked = (start_tracking(accelerator, tracking, "pix2pix", tracker_config)
               if accelerator.is_main_process else
               TrackingInfo(backend=(tracking or TrackingConfig()).backend,
                            tags=dict((tracking or TrackingConfig()).tags)))
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision)
    try:
        log(f"pix2pix: {len(train_dataset)} pairs, {num_epochs} epochs, {max_steps} optimizer steps "
            f"(batch {config.train_batch_size} x {k} processes x accumulation "
            f"{config.gradient_accumulation_steps} = {global_batch}), "
            f"device {accelerator.device}, precision {accelerator.mixed_precision}, seed {base_seed}")
        meter = ProgressMeter("pix2pix train", max_steps - global_step, log,
                              every_s=config.log_every_s, unit="steps")
        validation_grid: Optional[Path] = None
        validated_at = -1

        step_times: list[float] = []       # optimizer steps only: no checkpoint, validation or save
        mark = [time.perf_counter()]

        def after_step(step: int, loss: float, epoch: int) -> None:
            step_times.append(time.perf_counter() - mark[0])
            loss_curve.append(loss)
            accelerator.log({"train_loss": loss, "lr": run.lr_scheduler.get_last_lr()[0]}, step=step)
            meter.update(1, extra=f"loss {loss:.4f} epoch {epoch + 1}/{num_epochs}")
            if step % config.checkpointing_steps == 0 and step < max_steps:
                ckpt.save_checkpoint(accelerator, out_dir, step,
                                     {"base_seed": base_seed, "epoch": epoch, "loss_curve": loss_curve,
                                      "fingerprint": fingerprint, "num_processes": k},
                                     total_limit=config.checkpoints_total_limit, log=log)
            mark[0] = time.perf_counter()

        for epoch in range(first_epoch, num_epochs):
            if global_step >= max_steps:
                break
            mark[0] = time.perf_counter()
            skip = global_step % steps_per_epoch if epoch == first_epoch else 0
            global_step = _train_epoch(run, epoch, skip, global_step, max_steps,
                                       lambda s, loss, e=epoch: after_step(s, loss, e))
            if (epoch + 1) % config.validation_epochs == 0:
                grid = _validate(run, pretrained, val_dataset, out_dir, f"epoch_{epoch + 1:03d}",
                                 global_step, weight_dtype, log)
                if grid is not None:
                    validation_grid, validated_at = grid, global_step

        model_dir = out_dir / "model"
        final_loss = float(np.mean(loss_curve[-steps_per_epoch:])) if loss_curve else float("nan")
        # the first epoch's worth of steps, or the first half of a run shorter than two epochs
        loss_window = max(1, min(steps_per_epoch, len(loss_curve) // 2))
        first_loss = float(np.mean(loss_curve[:loss_window])) if loss_curve else float("nan")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            losses = {"steps": global_step, "first_loss": first_loss, "final_loss": final_loss,
                      "loss_window": loss_window, "resumed_from_step": resumed_step}
            _save_final_pipeline(pretrained, accelerator.unwrap_model(run.unet), model_dir,
                                 model_card(config, pretrained, train_dataset, fingerprint, base_seed, losses, card))
        if validated_at != global_step:
            validation_grid = _validate(run, pretrained, val_dataset, out_dir, "final", global_step,
                                        weight_dtype, log) or validation_grid
        curve_png = out_dir / "loss_curve.png"
        if accelerator.is_main_process:
            plot_loss_curve(loss_curve, curve_png, title=f"InstructPix2Pix train loss ({global_step} steps)")
        accelerator.wait_for_everyone()      # rank 0's files exist for every rank from here on
        unet_sha = sha256_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
        files = folder_manifest(model_dir)
        tag_run(accelerator, {"checkpoint_sha256": manifest_sha256(files)})
        seconds = time.perf_counter() - t0
        log(f"pix2pix done: {global_step} steps, final loss {final_loss:.4f}, {seconds:.1f}s, "
            f"model {model_dir}")
        return Pix2PixTrainResult(final_loss=final_loss, steps=global_step, epochs=num_epochs,
                                  loss_curve=loss_curve, model_dir=model_dir, unet_sha256=unet_sha,
                                  checkpoint_sha256=manifest_sha256(files), checkpoint_files=files,
                                  validation_grid=validation_grid, loss_curve_png=curve_png,
                                  tensorboard_dir=tb_dir, resumed_from_step=resumed_step,
                                  seconds=round(seconds, 3), latent_cache=cache_info,
                                  seed=base_seed, first_loss=first_loss,
                                  loss_window=loss_window, tracking=tracked,
                                  num_processes=k, global_batch_size=global_batch,
                                  seconds_per_step=float(np.mean(step_times[1:] or step_times))
                                  if step_times else float("nan"))
    finally:
        accelerator.end_training()


def config_dict(config: Pix2PixTrainConfig) -> dict[str, Any]:
    """The config as a plain dict (for metadata and logs)."""
    return asdict(config)
