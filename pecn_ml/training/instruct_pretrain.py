"""Instruct-pretraining of the demo's stand-in InstructPix2Pix UNet on generic frame pairs.

`timbrooks/instruct-pix2pix` arrives already able to edit an image as told; the seed fine-tunes
that ability. The demo's stand-in must arrive the same way, or fine-tuning starts from noise. So,
before any variant is trained, its UNet learns a general task on the training videos: from
frame i, produce frame i + k (k = 1 .. `max_offset`), told "show this k frames later"
(`prompt="generic"`) or, as an editing model that has seen motion described in words,
"{action text}, k frames later" (`prompt="action"`) or "{the seed's instruction for the action},
k frames later" (`prompt="instruction"`: the demo's, on every frame pair of every training video
and of the stand-in's own corpus, so the stand-in arrives knowing which way the named action moves
things and reads the instruction the fine-tuning will use; the fine-tuning prompt is a prefix of
it, see `instruction_with_gap`). With `plain_gap`, the pairs of that gap are told the seed's
instruction verbatim, the very prompt its fine-tuning variants use; with `progress_prob`, that share
of the pairs also carries the seed's progress sentence with the input frame's true percent
(`instruction_prompt`), so the stand-in arrives able to read a percentage (the demo's: its videos'
speed follows from their length, so the percent is the known answer of issue 16). The percent of an
arbitrary frame i says how much of the path is left, not how fast the object goes (that needs i as
well); with `progress_frame` the told pairs all start at that frame (the seed's input frame 20),
where the percent gives the speed away. With `train_text_encoder` the text encoder learns with
the UNet (the real run's CLIP arrives pretrained; a random one embeds prompts that differ in one
word or digit almost alike), and the trained encoder is saved in the stand-in (fine-tuning keeps
it frozen, as the seed does).

The loss is the variants' own (`pix2pix.training_step`, conditioning dropout),
on latents of the frozen, already trained VAE; every frame is encoded once (posterior mean and
log-variance; a fresh posterior sample per step, as `latent_cache` does).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from pecn_ml.prompts import build_prompt, progress_percent
from pecn_ml.training.autoencoder import frames_to_pixels
from pecn_ml.training.latent_cache import encode_pixels
from pecn_ml.training.pix2pix import (LATENT_TARGETS, TARGET_LATENTS, LatentBatch, draw_step_randomness, step_generator,
                                      training_step)
from pecn_ml.utils.progress import ProgressMeter

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class InstructPretrainConfig:
    """How the stand-in UNet is pretrained (defaults: the demo's)."""

    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 1e-3            # AdamW, cosine-annealed to 0 over `steps`
    max_offset: int = 5                    # target frame = input frame + k, k in 1..max_offset
    prompt: str = "generic"                # "generic": "show this k frames later"; "action": the
    #                                        video's action text and the frame gap; "instruction":
    #                                        the seed's instruction for that text and the gap
    conditioning_dropout_prob: float = 0.05
    min_timestep: int = 0                  # timesteps drawn from [min_timestep, 1000) (Pix2PixTrainConfig's)
    target_latents: str = "sample"         # "sample" or "mode" (Pix2PixTrainConfig's)
    latent_target: str = "frame"           # "frame" or "change" (pix2pix.LATENT_TARGETS); the
    #                                        built stand-in records it, and its fine-tunings follow
    plain_gap: Optional[int] = None        # with prompt "instruction": the gap told the seed's
    #                                        instruction verbatim, no ", k frames later" (None: none)
    progress_prob: float = 0.0             # with prompt "instruction": share of the pairs told the
    #                                        progress sentence (the input frame's true percent)
    progress_frame: Optional[int] = None   # with progress_prob: the told pairs all start at this
    #                                        frame of their video (None: any frame)
    train_text_encoder: bool = False       # train the text encoder with the UNet (False: frozen)
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.max_offset < 1:
            raise ValueError("InstructPretrainConfig: steps, batch_size, max_offset must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("InstructPretrainConfig: learning_rate must be > 0")
        if self.min_timestep < 0:
            raise ValueError("InstructPretrainConfig: min_timestep must be >= 0")
        if self.target_latents not in TARGET_LATENTS:
            raise ValueError(f"InstructPretrainConfig: target_latents must be one of {TARGET_LATENTS}, "
                             f"got {self.target_latents!r}")
        if self.latent_target not in LATENT_TARGETS:
            raise ValueError(f"InstructPretrainConfig: latent_target must be one of {LATENT_TARGETS}, "
                             f"got {self.latent_target!r}")
        if self.prompt not in PRETRAIN_PROMPTS:
            raise ValueError(f"InstructPretrainConfig: prompt must be one of {PRETRAIN_PROMPTS}, got {self.prompt!r}")
        if self.plain_gap is not None and not (isinstance(self.plain_gap, int) and 1 <= self.plain_gap <= self.max_offset):
            raise ValueError(f"InstructPretrainConfig: plain_gap must be None or an int in 1..max_offset "
                             f"({self.max_offset}), got {self.plain_gap!r}")
        if not 0.0 <= self.progress_prob <= 1.0:
            raise ValueError(f"InstructPretrainConfig: progress_prob must be within [0, 1], got {self.progress_prob!r}")
        if self.progress_frame is not None and not (isinstance(self.progress_frame, int) and self.progress_frame >= 0
                                                    and self.progress_prob > 0):
            raise ValueError(f"InstructPretrainConfig: progress_frame must be None or an int >= 0, with "
                             f"progress_prob > 0; got {self.progress_frame!r} (progress_prob {self.progress_prob})")
        if (self.plain_gap is not None or self.progress_prob > 0) and self.prompt != "instruction":
            raise ValueError("InstructPretrainConfig: plain_gap and progress_prob need prompt='instruction', "
                             f"got prompt={self.prompt!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRETRAIN_PROMPTS = ("generic", "action", "instruction")


def generic_instruction(k: int) -> str:
    """The pretraining prompt for a k-frame step (no action text, no progress)."""
    return f"show this {k} frames later"


def action_instruction(text: str, k: int) -> str:
    """The `prompt="action"` pretraining prompt: the action text and the frame gap, no progress."""
    return f"{text}, {k} frames later"


def instruction_with_gap(text: str, k: int) -> str:
    """The `prompt="instruction"` pretraining prompt: the seed's instruction for the action text
    (`prompts.build_prompt`, no progress) followed by the frame gap. The fine-tuning prompts
    (`build_prompt(text)`, with or without the progress sentence) are its prefix, so a causal
    text encoder (CLIP's) embeds their shared tokens exactly as in pretraining."""
    return f"{build_prompt(text)}, {k} frames later"


def instruction_prompt(text: str, k: int, plain_gap: Optional[int] = None,
                       progress: Optional[int] = None) -> str:
    """The `prompt="instruction"` pretraining prompt of a k-frame pair: the seed's prompt for the
    action text (`prompts.build_prompt`, with the progress sentence when `progress` is given),
    followed by ", k frames later" unless k is `plain_gap` (then it is the seed's prompt verbatim)."""
    told = build_prompt(text, progress)
    return told if k == plain_gap else f"{told}, {k} frames later"


def pretraining_prompts(config: "InstructPretrainConfig", texts: Optional[Sequence[str]],
                        num_videos: int) -> tuple[list[str], list[int]]:
    """(distinct prompts, prompt index of each (video, k) as video * max_offset + k - 1)."""
    if config.prompt == "generic":
        prompts = [generic_instruction(k) for k in range(1, config.max_offset + 1)]
        return prompts, [k for _ in range(num_videos) for k in range(config.max_offset)]
    if texts is None or len(texts) != num_videos:
        raise ValueError(f"instruct pretraining with prompt='action' needs one action text per video "
                         f"({num_videos} videos, {0 if texts is None else len(texts)} texts)")
    if config.prompt == "action":
        form = action_instruction
    else:
        def form(t: str, k: int) -> str:
            return instruction_prompt(t, k, config.plain_gap)
    wanted = [form(t, k) for t in texts for k in range(1, config.max_offset + 1)]
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
    """Train `unet` (8 input channels) in place on frame pairs, and `text_encoder` with it when
    `config.train_text_encoder` (else it stays frozen); returns the step losses.
    `texts`: the action text of each video (needed with `config.prompt` "action" or "instruction")."""
    from pecn_ml.models.pix2pix import tokenize_prompts

    device = next(unet.parameters()).device
    distinct, prompt_of = pretraining_prompts(config, texts, len(videos))
    latents = encode_videos(vae, videos, config.max_offset, log=log)
    pool = progress_pool(latents, config)
    distinct_ids = tokenize_prompts(tokenizer, distinct)                       # (P, L)
    prompt_of = torch.tensor(prompt_of, dtype=torch.long)
    empty_ids = tokenize_prompts(tokenizer, [""])                              # (1, L)
    scaling = float(vae.config.scaling_factor)
    params = list(unet.parameters())
    if config.train_text_encoder:
        text_encoder.requires_grad_(True).train()
        params += list(text_encoder.parameters())
    else:
        text_encoder.requires_grad_(False).eval()
    opt = torch.optim.AdamW(params, lr=config.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps))))
    g = torch.Generator().manual_seed(config.seed)
    told_ids: dict[str, torch.Tensor] = {}          # progress prompts, tokenized once each
    unet.train()
    losses: list[float] = []
    meter = ProgressMeter("instruct pretraining", config.steps, log, every_s=config.log_every_s,
                          unit="steps")
    for step in range(config.steps):
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
        loss = training_step(unet, noise_scheduler, batch, draws, empty_prompt_embeds=text[-1:],
                             conditioning_dropout_prob=config.conditioning_dropout_prob,
                             scaling_factor=scaling, target_latents=config.target_latents,
                             latent_target=config.latent_target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        meter.update(1, extra=f"loss {np.mean(losses[-20:]):.4f}")
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
    """One batch of pairs (B, 4) drawn from `g`, and which of them are told the progress sentence
    (B,) bool: a `config.progress_prob` share, redrawn from `pool` (`progress_pool`) when given."""
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
