"""InstructPix2Pix fine-tuning after diffusers' `train_instruct_pix2pix.py`, split into testable parts:
`Pix2PixTrainConfig`; `draw_sample_randomness` + `training_step` (one noise-prediction loss with the
conditioning dropout of paper §3.2.1, frozen VAE and text encoder in the weight dtype, the empty
prompt encoded once); `train_pix2pix`, the loop on the training scaffold (`scaffold.py`).

A sample's randomness comes from a generator seeded by (run seed, epoch, dataset index), so a
resumed run repeats an uninterrupted one and a sample draws the same noise on any rank. With K
processes the run is defined by its global batch G = batch x K x accumulation: each optimizer step
minimises the exact mean loss of the next G samples of the epoch's permutation (the last step of an
epoch: the n mod G left), so K = 2 at batch b computes what K = 1 at batch 2b does.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from pecn_ml.data.pairs import collate_pairs
from pecn_ml.images import make_grid, plot_loss_curve, save_png
from pecn_ml.model_cards import CardContext, build_card, write_card
from pecn_ml.models.pix2pix import (DEFAULT_PRETRAINED, LATENT_TARGETS, TRAINED_PART, build_pipeline,
                                    encode_prompts, load_pix2pix_components, run_pipeline, write_base_ref)
from pecn_ml.models.weights import is_local, weights_identity
from pecn_ml.training import scaffold
from pecn_ml.training.latent_cache import LatentStore, PairLatents, encode_dataset, encode_pixels, sample_latents
from pecn_ml.training.tracking import TrackingConfig, TrackingInfo, log_image, start_tracking, tag_run
from pecn_ml.utils.accel import (MIXED_PRECISION, GlobalBatchSampler, MixedPrecision, SlotDataset, broadcast_object,
                                 collate_slots, reduce_sum, slot_indices, slot_weights)
from pecn_ml.utils.files import atomic_dir, folder_manifest, manifest_sha256, sha256_file, sha256_json
from pecn_ml.utils.progress import LogFn, ProgressMeter

# diffusers.optimization.get_scheduler names that need no more than warmup and total steps
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
LR_SCHEDULERS: tuple[str, ...] = typing.get_args(LrScheduler)
TargetLatents = Literal["sample", "mode"]
TARGET_LATENTS: tuple[str, ...] = typing.get_args(TargetLatents)


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
    min_timestep: int = 0                          # timesteps ~ U[min_timestep, T) (the demo trains where it samples)
    # "sample": a posterior sample per step (the seed's); "mode": the posterior mean (the demo's small
    # VAE's posterior noise is noise in the very target a copy-level model must reproduce)
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
            *[(getattr(self, name) >= 1, f"{name} must be >= 1") for name in (
                "train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "checkpointing_steps",
                "validation_epochs")],
            *[(getattr(self, name) is None or getattr(self, name) >= 1, f"{name} must be >= 1 or None")
              for name in ("max_train_steps", "checkpoints_total_limit", "torch_threads")],
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (0 <= self.conditioning_dropout_prob <= 1 / 3, "conditioning_dropout_prob must be in [0, 1/3]"),
            (self.min_timestep >= 0, "min_timestep must be >= 0"),
            (self.target_latents in TARGET_LATENTS, f"target_latents must be one of {TARGET_LATENTS}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
            (self.lr_scheduler in LR_SCHEDULERS, f"lr_scheduler must be one of {LR_SCHEDULERS}"),
            (self.num_validation_samples >= 0, "num_validation_samples must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Pix2PixTrainConfig: {message}")

    @classmethod
    def demo(cls, **overrides: Any) -> "Pix2PixTrainConfig":
        """The demo's stand-in at 96 px: 4 epochs (120 steps), lr 1e-3 cosine-annealed (beat constant
        1e-4 and 1e-3 on the demo data); share `latent_cache_dir` between the variants."""
        return cls(**(dict(
            resolution=96, train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-3, lr_scheduler="cosine",
            num_train_epochs=4, mixed_precision="no", seed=0, checkpointing_steps=50,
            checkpoints_total_limit=1, validation_epochs=4, num_validation_samples=2,
            validation_inference_steps=8, log_every_s=5.0) | overrides))


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
    seconds_per_step: float = float("nan")   # optimizer steps of this call (but a warm-up first)
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
    """A generator that is a pure function of (seed, index): instruct pretraining's steps, and with
    `base_seed * 1_000_003 + epoch` a dataset item's draws in an epoch."""
    seed = (int(base_seed) * 1_000_003 + int(micro_index)) % (2 ** 63)
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
    """The draws of a micro-batch, row i from a generator of (base_seed, epoch, indices[i]): they do
    not depend on the batch (its size, its other samples, the rank it runs on)."""
    assert len(indices) == latent_shape[0], (len(indices), tuple(latent_shape))
    epoch_seed = int(base_seed) * 1_000_003 + int(epoch)
    rows = [draw_step_randomness((1, *latent_shape[1:]), num_train_timesteps,
                                 generator=step_generator(epoch_seed, int(i), device),
                                 dtype=dtype, device=device, min_timestep=min_timestep) for i in indices]
    return StepDraws(*(torch.cat([getattr(r, f.name) for r in rows]) for f in fields(StepDraws)))


def conditioning_dropout_masks(u: torch.Tensor, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_prompt, drop_image) bool masks (B,) from one uniform per sample (paper §3.2.1): u < p
    prompt only, p <= u < 2p both, 2p <= u < 3p image only."""
    assert u.ndim == 1, f"expected (B,) uniforms, got {tuple(u.shape)}"
    return u < 2 * prob, (u >= prob) & (u < 3 * prob)


def training_step(unet: Any, noise_scheduler: Any, batch: LatentBatch, draws: StepDraws, *,
                  empty_prompt_embeds: torch.Tensor, conditioning_dropout_prob: float,
                  scaling_factor: float, reduction: str = "mean", target_latents: str = "sample",
                  latent_target: str = "frame") -> torch.Tensor:
    """The noise-prediction loss of one micro-batch (forward only): a scalar, or (B,) with
    `reduction="none"`. `empty_prompt_embeds` (1, L, D) is the embedding of "". `target_latents`
    "mode" ignores `draws.latent_eps` (drawn all the same); `latent_target` "change" diffuses the
    target's minus the input's scaled latents."""
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
    rows = (latents.target_mean[index], latents.target_logvar[index], latents.image_latents[index],
            latents.prompt_embeds[latents.prompt_index[index]])
    return LatentBatch(*(t.to(device, non_blocking=True) for t in rows))


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The permutation of `epoch`: a pure function of (seed, epoch), resumable without RNG state."""
    g = torch.Generator().manual_seed((int(seed) * 7919 + int(epoch)) % (2 ** 63))
    return torch.randperm(n, generator=g).tolist()


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
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = run_pipeline(pipe, prompts, [Image.fromarray(p[0]) for p in pairs], latent_target=latent_target,
                           num_inference_steps=steps, guidance_scale=guidance_scale,
                           image_guidance_scale=image_guidance_scale, generator=generator)  # (n, R, R, 3) in [0, 1]
    outputs = [(np.clip(o, 0, 1) * 255).round().astype(np.uint8) for o in out]
    return make_grid([[p[0], p[1], o] for p, o in zip(pairs, outputs)],
                     captions=[dataset.video_ids[i] for i in range(n)])


# --- what a run is, and what it leaves --------------------------------------------------------

_FINGERPRINT_FIELDS = ("resolution", "learning_rate", "lr_scheduler", "lr_warmup_steps",
                       "conditioning_dropout_prob", "mixed_precision", "seed", "adam_weight_decay",
                       "max_grad_norm")
RANDOMNESS = "per-sample(seed, epoch, index)"  # in the fingerprint: older checkpoints drew per micro-batch


def _fingerprint(config: Pix2PixTrainConfig, pretrained: str, dataset: Any,
                 max_train_steps: int, num_processes: int = 1) -> dict[str, Any]:
    """What decides the run's result: the pretrained model by its weights' sha (a hub id by name),
    the batch by its global size (K = 2 at batch 1 and K = 1 at batch 2 resume each other)."""
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


def _save_final_pipeline(pretrained: str, unet: Any, model_dir: Path, card: Any = None) -> Path:
    """The fine-tuned model (+ card), atomically: for a local base the light layout (UNet +
    `base.json`), for a hub base a full `save_pretrained` pipeline."""
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
    """The card of a fine-tuned pipeline: the trainer's facts and the caller's `context` (without
    one, the base is named by the trainer's identity)."""
    context = scaffold.card_context(context, [("pix2pix_base", pretrained, str(fingerprint["pretrained"]))])
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


# --- the loop ---------------------------------------------------------------------------------

@dataclass
class _Run:
    """One training run's state, shared by its setup, step, validation and save functions."""

    config: Pix2PixTrainConfig
    pretrained: str
    dataset: Any
    val_dataset: Any
    out_dir: Path
    log: LogFn
    accelerator: Any
    fingerprint: dict[str, Any] = field(default_factory=dict)
    base_seed: int = 0
    unet: Any = None
    optimizer: Any = None
    lr_scheduler: Any = None
    loader: Any = None
    sampler: Optional[GlobalBatchSampler] = None
    parts: Any = None
    cached: Optional[PairLatents] = None
    empty_prompt_embeds: Optional[torch.Tensor] = None   # (1, L, D)
    cache_info: dict[str, Any] = field(default_factory=dict)
    global_step: int = 0
    resumed_step: Optional[int] = None
    loss_curve: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)   # optimizer steps only
    tracked: Optional[TrackingInfo] = None
    t0: float = field(default_factory=time.perf_counter)

    device: torch.device = field(init=False)
    n: int = field(init=False)                    # training pairs
    k: int = field(init=False)                    # processes
    global_batch: int = field(init=False)
    steps_per_epoch: int = field(init=False)
    max_steps: int = field(init=False)            # optimizer steps of the whole run
    num_epochs: int = field(init=False)
    autocast_dtype: Optional[torch.dtype] = field(init=False)

    def __post_init__(self) -> None:
        acc, cfg = self.accelerator, self.config
        self.device, self.n, self.k = acc.device, len(self.dataset), acc.num_processes
        self.global_batch = cfg.train_batch_size * self.k * cfg.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(self.n / self.global_batch)
        self.max_steps = cfg.max_train_steps or cfg.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision)


def _make_loader(run: _Run) -> None:
    """The micro-batch loader (not yet prepared) in global batches of the epoch's permutation: dataset
    indices into cached latents, or collated pixel pairs. Rank 0 encodes missing latents first."""
    cfg, acc, p = run.config, run.accelerator, run.parts
    run.cache_info = {"enabled": cfg.cache_latents}
    if cfg.cache_latents:
        t0 = time.perf_counter()
        store = LatentStore(cfg.latent_cache_dir or run.out_dir / "latent_cache", p.vae, p.tokenizer,
                            p.text_encoder, batch_size=cfg.encode_batch_size, log=run.log)
        with acc.main_process_first():
            run.cached = encode_dataset(store, run.dataset)
        run.cache_info.update(dir=str(store.root), seconds=round(time.perf_counter() - t0, 3),
                              encoded=dict(store.encoded), loaded=dict(store.loaded),
                              megabytes=round(run.cached.nbytes() / 2 ** 20, 2))
        run.log(f"latent cache: {run.cache_info}")
        data, collate = SlotDataset(range(run.n)), collate_slots(default_collate)  # items: indices (long)
    else:
        data, collate = SlotDataset(run.dataset), collate_slots(collate_pairs)
    run.sampler = GlobalBatchSampler(lambda epoch: epoch_order(run.base_seed, epoch, run.n), run.n,
                                     cfg.train_batch_size, run.k, cfg.gradient_accumulation_steps)
    run.loader = DataLoader(data, batch_sampler=run.sampler, collate_fn=collate,
                            num_workers=cfg.dataloader_num_workers, pin_memory=run.device.type == "cuda")


def _load_unet(unet: Any, folder: Path) -> None:
    from diffusers import UNet2DConditionModel

    loaded = UNet2DConditionModel.from_pretrained(folder, subfolder=TRAINED_PART)
    unet.register_to_config(**loaded.config)
    unet.load_state_dict(loaded.state_dict())


def _setup(run: _Run) -> None:
    """Load the model parts, encode or load the latents, build and prepare UNet, optimizer, loader."""
    from diffusers.optimization import get_scheduler

    cfg, acc = run.config, run.accelerator
    weight_dtype = run.autocast_dtype or torch.float32
    if cfg.allow_tf32 and run.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    scaffold.register_model_io(acc, lambda unet, folder: unet.save_pretrained(folder / TRAINED_PART), _load_unet)
    run.parts = p = load_pix2pix_components(run.pretrained)
    if p.widened:
        run.log(f"{run.pretrained}: 4-channel UNet widened to 8 input channels (new weights zero)")
    if cfg.gradient_checkpointing:
        p.unet.enable_gradient_checkpointing()
    for frozen in (p.vae, p.text_encoder):  # inference only: cast like the example
        frozen.to(run.device, dtype=weight_dtype).eval()
    p.unet.train()
    run.empty_prompt_embeds = encode_prompts(p.tokenizer, p.text_encoder, [""])   # (1, L, D), once
    _make_loader(run)
    optimizer = torch.optim.AdamW(p.unet.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    # Not prepared: accelerate would step it K times per step; stepped once per optimizer step here.
    run.lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                                     num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=run.max_steps)
    run.unet, run.optimizer, run.loader = acc.prepare(p.unet, optimizer, run.loader)
    acc.register_for_checkpointing(run.lr_scheduler)


def _start(pretrained: str, dataset: Any, val_dataset: Any, config: Pix2PixTrainConfig, out_dir: Path,
           log: LogFn, resume: bool, tracking: Optional[TrackingConfig]) -> _Run:
    """Accelerator, fingerprint, the checkpoint to resume (or none), seed, setup, resume, trackers."""
    if len(dataset) == 0:
        raise ValueError("train_pix2pix: the training dataset is empty")
    for name, ds in (("training", dataset), ("validation", val_dataset)):
        if ds is not None and ds.resolution != config.resolution:
            raise ValueError(f"train_pix2pix: {name} frames are {ds.resolution} px but "
                             f"config.resolution is {config.resolution}")
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = scaffold.build_accelerator(config.mixed_precision, config.force_cpu, log, tracking=tracking,
                                     out_dir=out_dir, log_dir="tensorboard")
    run = _Run(config, pretrained, dataset, val_dataset, out_dir, log, acc)
    run.fingerprint = _fingerprint(config, pretrained, dataset, run.max_steps, run.k)
    # Decided before the seed: only a checkpoint of this same run lends its seed to the run.
    latest = scaffold.latest_checkpoint(out_dir) if resume else None
    prior = scaffold.resumable(latest, run.fingerprint, log)
    if prior is None:
        scaffold.start_over(acc, [scaffold.checkpoints_dir(out_dir)])
    run.base_seed = (prior["base_seed"] if prior else config.seed if config.seed is not None
                     else broadcast_object(acc, secrets.randbits(62)))
    _setup(run)
    if prior is not None:
        acc.load_state(str(latest))   # model, optimizer, scheduler, scaler, this rank's RNG
        run.global_step = run.resumed_step = int(prior["global_step"])
        run.loss_curve = [float(v) for v in prior["loss_curve"]]
        log(f"resumed from {latest} (step {run.global_step}/{run.max_steps})")
    run.tracked = start_tracking(acc, tracking, "pix2pix", {
        **asdict(config), "base_seed": run.base_seed, "max_train_steps_resolved": run.max_steps,
        "pretrained": run.fingerprint["pretrained"], "pairs_sha256": run.fingerprint["pairs"],
        "train_pairs": run.n, "num_processes": run.k, "global_batch_size": run.global_batch})
    log(f"pix2pix: {run.n} pairs, {run.num_epochs} epochs, {run.max_steps} optimizer steps "
        f"(batch {config.train_batch_size} x {run.k} processes x accumulation "
        f"{config.gradient_accumulation_steps} = {run.global_batch}), "
        f"device {acc.device}, precision {acc.mixed_precision}, seed {run.base_seed}")
    return run


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
    weights = slot_weights(slots, run.n, run.k).to(run.device)
    return (losses * weights).sum()


def _optimizer_step(run: _Run, batches: Any, samples: int, micros: int, epoch: int) -> float:
    """One optimizer step over a global batch of `samples` (this rank: `micros` micro-batches); its
    mean loss over all ranks. Each rank backpropagates sum(w * loss) * K / samples, so DDP's
    gradient mean is the gradient of the global batch's mean loss."""
    acc = run.accelerator
    local = 0.0
    for m in range(micros):
        slots, data = next(batches)
        with contextlib.nullcontext() if m == micros - 1 else acc.no_sync(run.unet):
            part = _micro_loss_sum(run, slots, data, epoch)
            acc.backward(part * run.k / samples)
        local += float(part.detach())
    acc.clip_grad_norm_(run.unet.parameters(), run.config.max_grad_norm)
    run.optimizer.step()
    if not acc.optimizer_step_was_skipped:
        run.lr_scheduler.step()
    run.optimizer.zero_grad()
    return reduce_sum(acc, local) / samples


def _train_epoch(run: _Run, epoch: int, skip_steps: int, meter: ProgressMeter) -> None:
    """The optimizer steps of `epoch` from step `skip_steps` on (resume), each recorded and logged; a
    checkpoint every `checkpointing_steps` (but the last)."""
    run.unet.train()
    run.sampler.set_epoch(epoch)
    run.sampler.skip_steps = skip_steps
    run.loader.set_epoch(epoch)
    batches = iter(run.loader)
    for samples, micros in run.sampler.step_sizes():
        mark = time.perf_counter()
        loss = _optimizer_step(run, batches, samples, micros, epoch)
        run.global_step += 1
        run.step_times.append(time.perf_counter() - mark)
        run.loss_curve.append(loss)
        run.accelerator.log({"train_loss": loss, "lr": run.lr_scheduler.get_last_lr()[0]}, step=run.global_step)
        meter.update(1, extra=f"loss {loss:.4f} epoch {epoch + 1}/{run.num_epochs}")
        if run.global_step % run.config.checkpointing_steps == 0 and run.global_step < run.max_steps:
            scaffold.save_rotating(run.accelerator, run.out_dir, run.global_step,
                                   {"base_seed": run.base_seed, "epoch": epoch, "loss_curve": run.loss_curve,
                                    "fingerprint": run.fingerprint, "num_processes": run.k},
                                   total_limit=run.config.checkpoints_total_limit, log=run.log)
        if run.global_step >= run.max_steps:
            return
    assert next(batches, None) is None, "loader yielded more micro-batches than its plan"


def _validate(run: _Run, tag: str) -> Optional[Path]:
    """Rank 0 samples a validation grid (no collective op inside); every rank returns its path."""
    cfg, val = run.config, run.val_dataset
    if val is None or len(val) == 0 or cfg.num_validation_samples == 0:
        return None
    path = run.out_dir / "validation" / f"{tag}.png"
    if not run.accelerator.is_main_process:
        return path
    model = run.accelerator.unwrap_model(run.unet)
    model.eval()
    p = run.parts
    pipe = build_pipeline(run.pretrained, unet=model, vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer)
    grid = render_validation(pipe, val, cfg.num_validation_samples, steps=cfg.validation_inference_steps,
                             guidance_scale=cfg.validation_guidance_scale,
                             image_guidance_scale=cfg.validation_image_guidance_scale,
                             seed=run.base_seed, device=run.device, autocast_dtype=run.autocast_dtype,
                             latent_target=p.latent_target)
    model.train()
    save_png(grid, path)
    log_image(run.accelerator, "validation", np.asarray(grid), run.global_step)
    run.log(f"validation grid {path}")
    return path


def _train_epochs(run: _Run) -> tuple[Optional[Path], int]:
    """Every epoch left, validating every `validation_epochs`; (last grid, its step)."""
    meter = ProgressMeter("pix2pix train", run.max_steps - run.global_step, run.log,
                          every_s=run.config.log_every_s, unit="steps")
    grid, validated_at = None, -1
    first_epoch = run.global_step // run.steps_per_epoch
    for epoch in range(first_epoch, run.num_epochs):
        if run.global_step >= run.max_steps:
            break
        _train_epoch(run, epoch, run.global_step % run.steps_per_epoch if epoch == first_epoch else 0, meter)
        if (epoch + 1) % run.config.validation_epochs == 0:   # (None without validation data)
            grid, validated_at = _validate(run, f"epoch_{epoch + 1:03d}"), run.global_step
    return grid, validated_at


def _finish(run: _Run, card: Optional[CardContext], grid: Optional[Path], validated_at: int) -> Pix2PixTrainResult:
    """Save the final model (rank 0), validate it, plot the loss curve; the result on every rank."""
    acc, curve, per_epoch = run.accelerator, run.loss_curve, run.steps_per_epoch
    final_loss = float(np.mean(curve[-per_epoch:])) if curve else float("nan")
    # the first epoch's worth of steps, or the first half of a run shorter than two epochs
    loss_window = max(1, min(per_epoch, len(curve) // 2))
    first_loss = float(np.mean(curve[:loss_window])) if curve else float("nan")
    model_dir, curve_png = run.out_dir / "model", run.out_dir / "loss_curve.png"
    acc.wait_for_everyone()
    if acc.is_main_process:
        losses = {"steps": run.global_step, "first_loss": first_loss, "final_loss": final_loss,
                  "loss_window": loss_window, "resumed_from_step": run.resumed_step}
        _save_final_pipeline(run.pretrained, acc.unwrap_model(run.unet), model_dir, model_card(
            run.config, run.pretrained, run.dataset, run.fingerprint, run.base_seed, losses, card))
    if validated_at != run.global_step:
        grid = _validate(run, "final") or grid
    if acc.is_main_process:
        plot_loss_curve(curve, curve_png, title=f"InstructPix2Pix train loss ({run.global_step} steps)")
    acc.wait_for_everyone()      # rank 0's files exist for every rank from here on
    files = folder_manifest(model_dir)
    tag_run(acc, {"checkpoint_sha256": manifest_sha256(files)})
    seconds = time.perf_counter() - run.t0
    run.log(f"pix2pix done: {run.global_step} steps, final loss {final_loss:.4f}, {seconds:.1f}s, model {model_dir}")
    return Pix2PixTrainResult(
        final_loss=final_loss, steps=run.global_step, epochs=run.num_epochs, loss_curve=curve, model_dir=model_dir,
        unet_sha256=sha256_file(model_dir / TRAINED_PART / "diffusion_pytorch_model.safetensors"),
        checkpoint_sha256=manifest_sha256(files), checkpoint_files=files, validation_grid=grid,
        loss_curve_png=curve_png, tensorboard_dir=run.out_dir / "tensorboard", resumed_from_step=run.resumed_step,
        seconds=round(seconds, 3), latent_cache=run.cache_info, seed=run.base_seed, first_loss=first_loss,
        loss_window=loss_window, tracking=run.tracked, num_processes=run.k, global_batch_size=run.global_batch,
        seconds_per_step=float(np.mean(run.step_times[1:] or run.step_times)) if run.step_times else float("nan"))


def train_pix2pix(pretrained: str | Path, train_dataset: Any, config: Pix2PixTrainConfig,
                  out_dir: str | Path, *, val_dataset: Any = None, log: Optional[LogFn] = None,
                  resume: bool = True, tracking: Optional[TrackingConfig] = None,
                  card: Optional[CardContext] = None) -> Pix2PixTrainResult:
    """Fine-tune InstructPix2Pix (`pretrained`: an InstructPix2Pix or SD folder or hub name) on a
    `FramePairDataset`; checkpoints, tracker logs, validation grids and the final model with its
    card (`card`: the caller's context) go under `out_dir`.

    `resume=True` continues from the latest checkpoint of the same run (fingerprint); one of
    another run is logged and deleted. `tracking`: where to log (default TensorBoard in
    `{out_dir}/tensorboard`). Under `torchrun`/`accelerate launch` every rank calls this and gets
    the same result; `log` is called on rank 0, which writes the files.
    """
    with scaffold.torch_threads(config.torch_threads):
        run = _start(str(pretrained or DEFAULT_PRETRAINED), train_dataset, val_dataset, config, Path(out_dir),
                     scaffold.rank0_log(log), resume, tracking)
        try:
            grid, validated_at = _train_epochs(run)
            return _finish(run, card, grid, validated_at)
        finally:
            run.accelerator.end_training()

