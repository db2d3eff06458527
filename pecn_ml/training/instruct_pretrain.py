"""Instruct-pretraining of the demo's stand-in InstructPix2Pix UNet on generic frame pairs.

`timbrooks/instruct-pix2pix` arrives able to edit as told; the stand-in must too, or fine-tuning
starts from noise. So its UNet first learns frame i -> frame i + k (k = 1..`max_offset`) on the
training videos, told "show this k frames later" (`prompt="generic"`), "{action}, k frames later"
("action") or the seed's instruction for the action plus the gap ("instruction": the fine-tuning
prompt is its prefix). `plain_gap` tells that gap the seed's instruction verbatim; `progress_prob`
adds the seed's progress sentence (from `progress_frame` when set, where the percent gives the speed
away); `train_text_encoder` trains the text encoder too. The loss is `pix2pix.training_step`'s, on
latents of the frozen trained VAE, every frame encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from pecn_ml.prompts import build_prompt, progress_percent
from pecn_ml.training.autoencoder import frames_to_pixels, train_steps
from pecn_ml.training.latent_cache import encode_pixels
from pecn_ml.models.pix2pix import LATENT_TARGETS, tokenize_prompts
from pecn_ml.training.pix2pix import TARGET_LATENTS, LatentBatch, draw_step_randomness, step_generator, training_step
from pecn_ml.utils.progress import LogFn, ProgressMeter


@dataclass(frozen=True)
class InstructPretrainConfig:
    """How the stand-in UNet is pretrained (defaults: the demo's)."""

    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 1e-3            # AdamW, cosine-annealed to 0 over `steps`
    max_offset: int = 5                    # target frame = input frame + k, k in 1..max_offset
    prompt: str = "generic"                # PRETRAIN_PROMPTS: "generic", "action" or "instruction"
    conditioning_dropout_prob: float = 0.05
    min_timestep: int = 0                  # timesteps drawn from [min_timestep, 1000) (Pix2PixTrainConfig's)
    target_latents: str = "sample"         # "sample" or "mode" (Pix2PixTrainConfig's)
    latent_target: str = "frame"           # LATENT_TARGETS; the stand-in records it, its fine-tunings follow
    plain_gap: Optional[int] = None        # "instruction": the gap told the seed's instruction verbatim
    progress_prob: float = 0.0             # "instruction": share of pairs told the input frame's percent
    progress_frame: Optional[int] = None   # with progress_prob: told pairs start at this frame (None: any)
    train_text_encoder: bool = False       # train the text encoder with the UNet (False: frozen)
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        instruction = self.prompt == "instruction"
        checks = [
            (self.steps >= 1 and self.batch_size >= 1 and self.max_offset >= 1, "steps, batch_size, max_offset must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.min_timestep >= 0, "min_timestep must be >= 0"),
            (self.target_latents in TARGET_LATENTS, f"target_latents must be one of {TARGET_LATENTS}, got {self.target_latents!r}"),
            (self.latent_target in LATENT_TARGETS, f"latent_target must be one of {LATENT_TARGETS}, got {self.latent_target!r}"),
            (self.prompt in PRETRAIN_PROMPTS, f"prompt must be one of {PRETRAIN_PROMPTS}, got {self.prompt!r}"),
            (self.plain_gap is None or (isinstance(self.plain_gap, int) and 1 <= self.plain_gap <= self.max_offset),
             f"plain_gap must be None or an int in 1..max_offset ({self.max_offset}), got {self.plain_gap!r}"),
            (0.0 <= self.progress_prob <= 1.0, f"progress_prob must be within [0, 1], got {self.progress_prob!r}"),
            (self.progress_frame is None or (isinstance(self.progress_frame, int) and self.progress_frame >= 0
                                             and self.progress_prob > 0),
             f"progress_frame must be None or an int >= 0, with progress_prob > 0; got {self.progress_frame!r} "
             f"(progress_prob {self.progress_prob})"),
            (instruction or (self.plain_gap is None and self.progress_prob == 0),
             f"plain_gap and progress_prob need prompt='instruction', got prompt={self.prompt!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"InstructPretrainConfig: {message}")


PRETRAIN_PROMPTS = ("generic", "action", "instruction")


def instruction_prompt(text: str, k: int, plain_gap: Optional[int] = None,
                       progress: Optional[int] = None) -> str:
    """The seed's prompt for the action (with the progress sentence when `progress` is given), plus
    ", k frames later" unless k is `plain_gap`."""
    told = build_prompt(text, progress)
    return told if k == plain_gap else f"{told}, {k} frames later"


def pretraining_prompts(config: "InstructPretrainConfig", texts: Optional[Sequence[str]],
                        num_videos: int) -> tuple[list[str], list[int]]:
    """(distinct prompts, prompt index of each (video, k) as video * max_offset + k - 1)."""
    ks = range(1, config.max_offset + 1)
    if config.prompt == "generic":
        return [f"show this {k} frames later" for k in ks], [k - 1 for _ in range(num_videos) for k in ks]
    if texts is None or len(texts) != num_videos:
        raise ValueError(f"instruct pretraining with prompt='action' needs one action text per video "
                         f"({num_videos} videos, {0 if texts is None else len(texts)} texts)")
    wanted = [f"{t}, {k} frames later" if config.prompt == "action" else instruction_prompt(t, k, config.plain_gap)
              for t in texts for k in ks]
    prompts = sorted(set(wanted))
    index = {p: i for i, p in enumerate(prompts)}
    return prompts, [index[p] for p in wanted]


@dataclass
class FrameLatents:
    """Posterior parameters of every frame of some videos, and the (input, target, k) pairs."""

    mean: torch.Tensor      # (N, 4, h, w) all frames, video after video
    logvar: torch.Tensor    # (N, 4, h, w)
    pairs: torch.Tensor     # (P, 4) long: input row, target row, k, video
    starts: torch.Tensor    # (V,) long: each video's first row
    lengths: torch.Tensor   # (V,) long: each video's frame count


@torch.no_grad()
def encode_videos(vae: Any, videos: Sequence[np.ndarray], max_offset: int,
                  batch_size: int = 64, log: Optional[LogFn] = None) -> FrameLatents:
    """Encode every frame of `videos` (each (T, R, R, 3) uint8) once; list the usable pairs."""
    means, logvars, pairs, row, starts = [], [], [], 0, []
    meter = ProgressMeter("encode frames", sum(len(v) for v in videos), log, unit="frames")
    for v, frames in enumerate(videos):
        for s in range(0, len(frames), batch_size):
            mean, logvar = encode_pixels(vae, frames_to_pixels(frames[s:s + batch_size]))
            means.append(mean.float().cpu())
            logvars.append(logvar.float().cpu())
            meter.update(len(mean))
        t = len(frames)
        starts.append(row)
        pairs += [(row + i, row + i + k, k, v) for k in range(1, max_offset + 1)
                  for i in range(t - k)]
        row += t
    if not pairs:
        raise ValueError("encode_videos: no video has two frames")
    return FrameLatents(torch.cat(means), torch.cat(logvars), torch.tensor(pairs, dtype=torch.long),
                        torch.tensor(starts, dtype=torch.long), torch.tensor([len(v) for v in videos], dtype=torch.long))


def pretrain_instruct_unet(unet: Any, vae: Any, tokenizer: Any, text_encoder: Any,
                           noise_scheduler: Any, videos: Sequence[np.ndarray],
                           config: InstructPretrainConfig, *, texts: Optional[Sequence[str]] = None,
                           log: Optional[LogFn] = None) -> list[float]:
    """Train `unet` (and `text_encoder` when `config.train_text_encoder`) in place on frame pairs;
    the step losses. `texts`: each video's action text (for prompts "action" and "instruction")."""
    device = next(unet.parameters()).device
    distinct, prompt_of = pretraining_prompts(config, texts, len(videos))
    latents = encode_videos(vae, videos, config.max_offset, log=log)
    pool = progress_pool(latents, config)
    distinct_ids = tokenize_prompts(tokenizer, distinct)                       # (P, L)
    prompt_of = torch.tensor(prompt_of, dtype=torch.long)
    empty_ids = tokenize_prompts(tokenizer, [""])                              # (1, L)
    scaling = float(vae.config.scaling_factor)
    text_encoder.requires_grad_(config.train_text_encoder).train(config.train_text_encoder)
    params = [*unet.parameters(), *(text_encoder.parameters() if config.train_text_encoder else ())]
    g = torch.Generator().manual_seed(config.seed)
    told_ids: dict[str, torch.Tensor] = {}          # progress prompts, tokenized once each

    def step_loss(step: int) -> torch.Tensor:
        pick, told = draw_pairs(latents, config, g, pool)
        inp, tgt, k, video = pick[:, 0], pick[:, 1], pick[:, 2], pick[:, 3]   # (B,) each
        ids = distinct_ids[prompt_of[video * config.max_offset + k - 1]]
        for b in told.nonzero()[:, 0].tolist():
            prompt = progress_prompt(pick[b], latents, texts, config)
            if prompt not in told_ids:
                told_ids[prompt] = tokenize_prompts(tokenizer, [prompt])[0]
            ids[b] = told_ids[prompt]
        with torch.set_grad_enabled(config.train_text_encoder):
            text = text_encoder(torch.cat([ids, empty_ids]).to(device))[0]
        batch = LatentBatch(latents.mean[tgt].to(device), latents.logvar[tgt].to(device),
                            latents.mean[inp].to(device), text[:-1])
        draws = draw_step_randomness(batch.target_mean.shape,
                                     noise_scheduler.config.num_train_timesteps,
                                     generator=step_generator(config.seed, step, device),
                                     dtype=batch.target_mean.dtype, device=device,
                                     min_timestep=config.min_timestep)
        return training_step(unet, noise_scheduler, batch, draws, empty_prompt_embeds=text[-1:],
                             conditioning_dropout_prob=config.conditioning_dropout_prob,
                             scaling_factor=scaling, target_latents=config.target_latents,
                             latent_target=config.latent_target)

    unet.train()
    losses = train_steps("instruct pretraining", params, config, step_loss, log, max_grad_norm=config.max_grad_norm)
    unet.eval()
    text_encoder.requires_grad_(False).eval()
    return losses


def progress_pool(latents: FrameLatents, config: InstructPretrainConfig) -> Optional[torch.Tensor]:
    """The pairs whose input is frame `config.progress_frame` of its video (None without one)."""
    if config.progress_frame is None or config.progress_prob == 0:
        return None
    inp, video = latents.pairs[:, 0], latents.pairs[:, 3]
    pool = latents.pairs[inp - latents.starts[video] == config.progress_frame]
    if not len(pool):
        raise ValueError(f"instruct pretraining: progress_frame {config.progress_frame} is the input of no pair "
                         f"(the longest video has {int(latents.lengths.max())} frames)")
    return pool


def draw_pairs(latents: FrameLatents, config: InstructPretrainConfig, g: torch.Generator,
               pool: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of pairs (B, 4) from `g`, and which are told the progress sentence (B,) bool (redrawn
    from `pool` when given)."""
    b = config.batch_size
    pick = latents.pairs[torch.randint(0, len(latents.pairs), (b,), generator=g)]
    if config.progress_prob == 0:
        return pick, torch.zeros(b, dtype=torch.bool)
    told = torch.rand(b, generator=g) < config.progress_prob
    if pool is not None and told.any():
        pick[told] = pool[torch.randint(0, len(pool), (int(told.sum()),), generator=g)]
    return pick, told


def progress_prompt(pair: torch.Tensor, latents: FrameLatents, texts: Sequence[str],
                    config: InstructPretrainConfig) -> str:
    """The prompt of one (input, target, k, video) pair told its input frame's true percent."""
    inp, _, k, video = (int(x) for x in pair)
    percent = progress_percent(inp - int(latents.starts[video]), int(latents.lengths[video]))
    return instruction_prompt(texts[video], k, config.plain_gap, percent)
