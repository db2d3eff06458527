"""Sample a trained InstructPix2Pix variant on an eval set and score it beside three references.

The seed's evaluate.sh + sample_from_pix2pix.py + ssim.py as library code: a matched, stratified
draw of videos (`select_samples`: the same for every variant, seed and the copy-frame baseline), one
CPU generator per sample (`sample_seed`), and SSIM/PSNR plus motion-region scores (`pecn_ml.metrics`)
from the saved PNGs for the model, the copy frame (`baseline_*`), the latent copy VAE(input)
(`latent_copy_*`) and the VAE ceiling VAE(target) (`autoencoder_*`). How to read them: docs/OPERATIONS.md.
Output folder (renamed into place when complete): input/ target/ output/ autoencoder/ latent_copy/
comparison/ ({id}.png each), comparison_grid.png, results.json (written last).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from itertools import islice, zip_longest
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from pecn_ml.images import comparison_grid, load_png, save_png, stack_vertical
from pecn_ml.metrics import (METRIC_SETTINGS, mean_std, motion_fraction, motion_mae, motion_mask, motion_psnr, psnr,
                             ssim)
from pecn_ml.training.autoencoder import roundtrip
from pecn_ml.prompts import PROMPT_TEXTS, action_text, build_prompt, progress_percent, shuffle_percents
from pecn_ml.utils.files import atomic_dir, folder_manifest, manifest_sha256, write_json_atomic
from pecn_ml.utils.progress import ProgressMeter
from pecn_ml.variants import VARIANTS

LogFn = Callable[[str], None]

RESULTS_FORMAT_VERSION = 1
GRID_ROWS = 4                     # comparisons stacked in comparison_grid.png
SUBDIRS = ("input", "target", "output", "autoencoder", "latent_copy", "comparison")
METRICS = ("ssim", "psnr", "motion_psnr", "motion_mae")   # keys of every set-level mean / std dict
# scored images (saved subfolder) -> key prefix in results.json; all against target/ on one mask
METHODS = {"output": "", "latent_copy": "latent_copy_", "input": "baseline_", "autoencoder": "autoencoder_"}
COMPARISON_LABELS = ["Input", "GT", "Output", "VAE(GT)", "VAE(Input)"]
# every sample must have the latest target of any variant (frame 25): next1 and next5 share videos
MATCHED_TARGET_IDX = max(v.target_idx for v in VARIANTS.values())


@dataclass(frozen=True)
class SamplingConfig:
    """Evaluation settings; defaults are the seed's evaluate.sh (frame 20 -> 21, 100 samples, 25 steps,
    image guidance 1.5, text guidance 7.5, seed 42)."""

    input_idx: int = 20                  # 0-based input frame
    target_idx: int = 21                 # 0-based ground-truth frame (21 or 25)
    num_samples: int = 100               # videos of the eval set: a matched draw, equal per task
    selection_seed: int = 0              # the draw's seed (same for every variant and training seed)
    num_inference_steps: int = 25
    image_guidance_scale: float = 1.5
    guidance_scale: float = 7.5          # text guidance
    seed: int = 42
    batch_size: int = 8                  # samples per pipeline call
    add_progress: bool = False           # append "And N% of the action has been completed."
    prompt_text: str = "class"           # action text: "class" (template, seed) or "label"
    progress_shuffle_seed: Optional[int] = None  # control arms: percents deranged among the samples
    change_threshold: Optional[float] = None  # "change" models: prediction only where the predicted
    #                                        change's latent norm reaches this (models.pix2pix.run_pipeline)
    change_dilate: int = 0               # pixels that region grows by
    device: str = "auto"                 # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"                  # "auto" (fp16 on cuda, fp32 on cpu), "float32", "float16", "bfloat16"

    def __post_init__(self):
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"SamplingConfig.{name} must be {what}, got {getattr(self, name)!r}")

        def is_int(v: Any, low: int) -> bool:
            return isinstance(v, int) and v >= low

        need(is_int(self.input_idx, 0), "input_idx", "an int >= 0")
        need(isinstance(self.target_idx, int) and self.target_idx > self.input_idx, "target_idx",
             f"an int > input_idx ({self.input_idx})")
        need(is_int(self.selection_seed, 0), "selection_seed", "an int >= 0")
        for name in ("num_samples", "num_inference_steps", "batch_size"):
            need(is_int(getattr(self, name), 1), name, "an int >= 1")
        need(self.progress_shuffle_seed is None or (self.add_progress and is_int(self.progress_shuffle_seed, 0)),
             "progress_shuffle_seed", f"None or an int >= 0 with add_progress (add_progress={self.add_progress})")
        need(self.change_threshold is None or self.change_threshold > 0, "change_threshold", "None or > 0")
        need(is_int(self.change_dilate, 0), "change_dilate", "an int >= 0")
        need(self.prompt_text in PROMPT_TEXTS, "prompt_text", f"one of {PROMPT_TEXTS}")
        need(self.dtype in ("auto", "float32", "float16", "bfloat16"), "dtype", "auto/float32/float16/bfloat16")
        need(self.device in ("auto", "cpu") or self.device.startswith(("cuda", "mps")), "device",
             "auto, cpu, cuda[:N] or mps")

    @classmethod
    def demo(cls, **overrides: Any) -> "SamplingConfig":
        """The demo's evaluation: 24 samples, 10 denoising steps, batches of 8."""
        return replace(cls(num_samples=24, num_inference_steps=10, batch_size=8), **overrides)


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate_model` wrote and measured (metric dicts keyed by `METRICS`)."""

    out_dir: Path
    results_json: Path
    grid_png: Optional[Path]                 # first GRID_ROWS comparisons stacked
    mean: dict[str, float]
    std: dict[str, float]
    baseline_mean: dict[str, float]
    baseline_std: dict[str, float]
    autoencoder_mean: dict[str, float]       # the VAE round trip of the targets (the ceiling)
    autoencoder_std: dict[str, float]
    latent_copy_mean: dict[str, float]       # the VAE round trip of the inputs (copying, as a latent model)
    latent_copy_std: dict[str, float]
    n: int
    samples: list[dict]                      # rows of results.json "samples"
    skipped: dict[str, str]                  # video id -> reason
    checkpoint_sha256: str
    config: dict[str, Any] = field(default_factory=dict)
    motion_fraction_mean: float = math.nan   # mean share of the frame in the motion mask
    n_static: int = 0                        # samples with an empty mask (scored on the whole frame)


# ----------------------------------------------------------------------------- selection


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_seed(seed: int, video_id: str) -> int:
    """Generator seed of one sample: first 8 bytes of sha256("{seed}:{video_id}") as a 63-bit int."""
    return int(_sha256(f"{int(seed)}:{video_id}")[:16], 16) & ((1 << 63) - 1)


@dataclass(frozen=True)
class Selected:
    """One eligible eval entry."""

    video_id: str
    label: str
    task: str
    text: str                         # the action text in the prompt (class text or label)
    num_frames: int
    progress_percent: Optional[int]   # the number in the prompt; None without progress
    true_progress_percent: Optional[int] = None  # the video's own (differs when shuffled)


def _entry_fields(entry: Any, i: int, prompt_text: str = "class") -> tuple[str, str, str, str]:
    if not isinstance(entry, Mapping) or "id" not in entry or "label" not in entry:
        raise ValueError(f"eval annotations entry {i} is not a dict with 'id' and 'label': {entry!r:.200}")
    vid, label = entry["id"], entry["label"]
    if not isinstance(vid, str) or not vid or "/" in vid or vid.startswith("."):
        raise ValueError(f"eval annotations entry {i} has an invalid video id {vid!r}")
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"eval annotations entry {i} (video {vid}) has an empty label")
    try:
        text = action_text(entry, prompt_text)
    except ValueError as e:
        raise ValueError(f"eval annotations entry {i}: {e}") from None
    return vid, label, str(entry.get("task", "")), text


def _cached_num_frames(cache: Any, video_id: str) -> Optional[int]:
    """Frame count, or None when `video_id` is not in the cache."""
    if hasattr(cache, "__contains__") and video_id not in cache:
        return None
    try:
        n = cache.num_frames(video_id)
    except (KeyError, FileNotFoundError):
        return None
    return int(n) if n else None


def stratified_draw(by_task: Mapping[str, Sequence[str]], num_samples: int, selection_seed: int) -> list[str]:
    """`num_samples` ids taken in turns from each task's ids (tasks in name order, each task's ranked
    by sha256("{selection_seed}:{id}")): equal numbers per task within one."""
    queues = [sorted(ids, key=lambda v: _sha256(f"{int(selection_seed)}:{v}")) for _, ids in sorted(by_task.items())]
    in_turns = (v for turn in zip_longest(*queues) for v in turn if v is not None)
    return list(islice(in_turns, max(num_samples, 0)))


def selection_record(chosen: Sequence["Selected"], selection_seed: int, target_idx: int) -> dict[str, Any]:
    """results.json `selection`: the drawn ids in order, their sha256, the count per task, the frames needed."""
    ids = [s.video_id for s in chosen]
    return {"rule": "stratified by task, sha256-ranked, in turns", "seed": int(selection_seed),
            "frames_required": max(int(target_idx), MATCHED_TARGET_IDX) + 1, "ids": ids, "ids_sha256": ids_sha256(ids),
            "per_task": dict(sorted(Counter(s.task for s in chosen).items()))}


def ids_sha256(ids: Sequence[str]) -> str:
    """sha256 of the ids as a compact JSON list: the same draw gives the same hash."""
    return _sha256(json.dumps(list(ids), separators=(",", ":")))


def _eligible(cache: Any, entries: Sequence[Mapping], required: int, prompt_text: str,
              skipped: dict[str, str]) -> tuple[dict[str, tuple], dict[str, list[str]]]:
    """{id: (id, label, task, text, frames)} of the entries cached with more than `required` frames,
    and their ids per task; the others go to `skipped` with their reason."""
    seen: set[str] = set()
    eligible: dict[str, tuple[str, str, str, str, int]] = {}
    by_task: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        vid, label, task, text = _entry_fields(entry, i, prompt_text)
        if vid in seen:
            skipped.setdefault(vid, f"duplicate id (entry {i})")
            continue
        seen.add(vid)
        n = _cached_num_frames(cache, vid)
        if n is None:
            skipped[vid] = "not in frame cache"
        elif n <= required:
            skipped[vid] = f"only {n} frames; frame {required} (0-based) needed"
        else:
            eligible[vid] = (vid, label, task, text, n)
            by_task.setdefault(task, []).append(vid)
    return eligible, by_task


def select_samples(cache: Any, entries: Sequence[Mapping], input_idx: int, target_idx: int,
                   num_samples: int, *, add_progress: bool = False,
                   progress_override: Optional[Mapping[str, float]] = None, prompt_text: str = "class",
                   shuffle_seed: Optional[int] = None,
                   selection_seed: int = 0) -> tuple[list[Selected], dict[str, str]]:
    """The matched, stratified draw of `num_samples` eligible entries, and {video_id: reason} of every
    entry not taken. Each sample needs frame max(target_idx, MATCHED_TARGET_IDX); with `shuffle_seed`
    the percents are deranged among the selected samples."""
    assert 0 <= input_idx < target_idx, (input_idx, target_idx)
    required = max(target_idx, MATCHED_TARGET_IDX)
    skipped: dict[str, str] = {}
    eligible, by_task = _eligible(cache, entries, required, prompt_text, skipped)
    chosen: list[Selected] = []
    for vid in stratified_draw(by_task, num_samples, selection_seed):
        vid, label, task, text, n = eligible[vid]
        progress: Optional[int] = None
        if add_progress and progress_override is None:
            progress = progress_percent(input_idx, n)
        elif add_progress:
            if vid not in progress_override:
                skipped[vid] = "no PAC-Net progress estimate"
                continue
            est = float(progress_override[vid])
            if not (math.isfinite(est) and 0 <= est <= 100):
                raise ValueError(f"progress estimate of video {vid} is {est!r}, not within [0, 100]")
            progress = int(est)
        chosen.append(Selected(vid, label, task, text, n, progress, progress))
    if add_progress and shuffle_seed is not None:
        shuffled = shuffle_percents([s.progress_percent for s in chosen], shuffle_seed)
        chosen = [replace(s, progress_percent=p) for s, p in zip(chosen, shuffled)]
    return chosen, skipped


def progress_source_text(config: SamplingConfig, estimates: bool) -> Optional[str]:
    """results.json config `progress_source`: None, "frame count", "PAC-Net estimate", or for a
    shuffled arm "shuffled (seed S)" / "PAC-Net estimate, shuffled (seed S)"."""
    if not config.add_progress:
        return None
    if config.progress_shuffle_seed is None:
        return "PAC-Net estimate" if estimates else "frame count"
    return ("PAC-Net estimate, " if estimates else "") + f"shuffled (seed {config.progress_shuffle_seed})"


# ----------------------------------------------------------------------------- baseline


def _summary(rows: Sequence[Mapping[str, float]], prefix: str = "") -> tuple[dict, dict]:
    mean, std = {}, {}
    for m in METRICS:
        mean[m], std[m] = mean_std([r[prefix + m] for r in rows])
    return mean, std


def score_methods(images: Mapping[str, np.ndarray], target: np.ndarray, inp: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample scores (arrays (B,)) of each method's uint8 (B, R, R, 3) images ({subfolder: images},
    prefixes in `METHODS`) against `target`, motion-region ones on one mask per sample from `inp`
    and `target`; plus "motion_fraction"."""
    mask = motion_mask(inp, target)                                      # (B, R, R)
    out: dict[str, np.ndarray] = {"motion_fraction": motion_fraction(mask)}
    for sub, pred in images.items():
        k = METHODS[sub]
        out.update({f"{k}ssim": ssim(pred, target), f"{k}psnr": psnr(pred, target),
                    f"{k}motion_psnr": motion_psnr(pred, target, mask),
                    f"{k}motion_mae": motion_mae(pred, target, mask)})
    return out


def _cache_config(cache: Any) -> dict[str, Any]:
    return {"cache_resolution": getattr(cache, "resolution", None), "cache_version": getattr(cache, "version", None),
            "metrics": METRIC_SETTINGS}


def copy_frame_baseline(cache: Any, entries: Sequence[Mapping], input_idx: int, target_idx: int,
                        num_samples: int, *, selection_seed: int = 0,
                        log: Optional[LogFn] = None) -> dict[str, Any]:
    """Scores of "predict the input frame unchanged" on the samples `evaluate_model` would take (no
    progress estimates, no model): {"samples", "mean", "std", "n", "n_requested", "skipped",
    "selection", "config"}."""
    chosen, skipped = select_samples(cache, entries, input_idx, target_idx, num_samples, prompt_text="label",
                                     selection_seed=selection_seed)  # no prompt here: any entry will do
    meter = ProgressMeter(f"copy-frame baseline {input_idx}->{target_idx}", len(chosen), log, unit="samples")
    rows = []
    for s in chosen:
        inp, tgt = cache.frame(s.video_id, input_idx), cache.frame(s.video_id, target_idx)  # (R, R, 3)
        scores = score_methods({"output": inp[None]}, tgt[None], inp[None])  # the copy as the "output"
        rows.append({"video_id": s.video_id, "task": s.task, "label": s.label,
                     **{k: float(v[0]) for k, v in scores.items()}})
        meter.update()
    mean, std = _summary(rows)
    return {"samples": rows, "mean": mean, "std": std, "n": len(rows), "n_requested": num_samples,
            "skipped": skipped, "selection": selection_record(chosen, selection_seed, target_idx),
            "config": {"method": "copy input frame", "input_idx": input_idx, "target_idx": target_idx,
                       "num_samples": num_samples, **_cache_config(cache)}}


# ----------------------------------------------------------------------------- model


def resolve_device_dtype(config: SamplingConfig):
    """(torch.device, torch.dtype) for `config`: auto = CUDA fp16 when present, else CPU fp32."""
    import torch

    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if config.device == "auto" else config.device))
    if config.dtype == "auto":
        return device, torch.float16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, config.dtype)


def checkpoint_sha256(model_dir: str | os.PathLike) -> str:
    """sha256 of the checkpoint folder's manifest (every file the pipeline loads; README.md left out).
    FileNotFoundError for a folder that is gone or empty."""
    return manifest_sha256(folder_manifest(model_dir))


def load_pipeline(model_dir: str | os.PathLike, device, dtype):
    """The `StableDiffusionInstructPix2PixPipeline` of a full `save_pretrained` folder or a light one
    (`unet/` + `base.json`, base verified), on `device` in `dtype`, no safety checker, quiet."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    from pecn_ml.models.pix2pix import BASE_REF, TRAINED_PART, build_pipeline, resolve_base

    model_dir = Path(model_dir)
    full = (model_dir / "model_index.json").is_file()
    if not full and not (model_dir / BASE_REF).is_file():
        raise FileNotFoundError(f"{model_dir}: neither model_index.json (a saved pipeline) nor {BASE_REF} (a "
                                f"fine-tuned UNet with its base); not an InstructPix2Pix checkpoint")
    with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype to dtype; both work
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        if full:
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                model_dir, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
        else:
            base = resolve_base(model_dir)
            unet = UNet2DConditionModel.from_pretrained(model_dir / TRAINED_PART, torch_dtype=dtype)
            pipe = build_pipeline(base, unet=unet, torch_dtype=dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def predict_batch(pipe, inputs: Sequence[np.ndarray], prompts: Sequence[str], seeds: Sequence[int],
                  config: SamplingConfig, latent_target: str = "frame") -> np.ndarray:
    """Run the pipeline on uint8 (R, R, 3) inputs, one CPU generator per sample; `latent_target`
    is the checkpoint's. Returns (B, R, R, 3) uint8, rounded as diffusers' PIL conversion does."""
    import torch
    from PIL import Image

    from pecn_ml.models.pix2pix import run_pipeline

    assert len(inputs) == len(prompts) == len(seeds) > 0, (len(inputs), len(prompts), len(seeds))
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    out = run_pipeline(pipe, prompts, [Image.fromarray(a) for a in inputs], latent_target=latent_target,
                       num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                       image_guidance_scale=config.image_guidance_scale,
                       change_threshold=config.change_threshold, change_dilate=config.change_dilate,
                       generator=generators)  # (B, H, W, 3) float in [0, 1]
    out = (np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    want = (len(inputs),) + inputs[0].shape
    if out.shape != want:
        raise ValueError(f"pipeline output {out.shape} differs from the input frames {want}: the "
                         f"resolution must be a multiple of the VAE scale factor {pipe.vae_scale_factor}")
    return out


# ----------------------------------------------------------------------------- evaluate


def _sample_batch(pipe, cache: Any, batch: Sequence[Selected], config: SamplingConfig, target_kind: str,
                  tmp: Path, grid_rows: list) -> list[dict]:
    """Sample one batch, save its images and comparisons under `tmp` and score it from the saved
    PNGs (so anyone can recompute the scores); returns its rows of results.json `samples`."""
    inputs = [cache.frame(s.video_id, config.input_idx) for s in batch]    # (R, R, 3) each
    targets = [cache.frame(s.video_id, config.target_idx) for s in batch]  # (R, R, 3) each
    prompts = [build_prompt(s.text, s.progress_percent) for s in batch]
    outputs = predict_batch(pipe, inputs, prompts, [sample_seed(config.seed, s.video_id) for s in batch],
                            config, target_kind)                           # (B, R, R, 3)
    ceiling = roundtrip(pipe.vae, np.stack(targets))                       # (B, R, R, 3)
    latent_copy = roundtrip(pipe.vae, np.stack(inputs))                    # (B, R, R, 3)
    rows = []
    for s, inp, tgt, out, ae, lc, prompt in zip(batch, inputs, targets, outputs, ceiling, latent_copy, prompts):
        for sub, img in (("input", inp), ("target", tgt), ("output", out), ("autoencoder", ae), ("latent_copy", lc)):
            save_png(img, tmp / sub / f"{s.video_id}.png")
        grid = comparison_grid([inp, tgt, out, ae, lc], COMPARISON_LABELS)
        save_png(grid, tmp / "comparison" / f"{s.video_id}.png")
        if len(grid_rows) < GRID_ROWS:
            grid_rows.append(grid)
        rows.append({"video_id": s.video_id, "task": s.task, "label": s.label, "prompt": prompt,
                     "progress_percent": s.progress_percent, "true_progress_percent": s.true_progress_percent,
                     "num_frames": s.num_frames})
    saved = {sub: np.stack([load_png(tmp / sub / f"{s.video_id}.png") for s in batch])
             for sub in ("target", *METHODS)}  # each (B, R, R, 3)
    scores = score_methods({sub: saved[sub] for sub in METHODS}, saved["target"], saved["input"])
    for j, row in enumerate(rows):
        row.update({k: float(v[j]) for k, v in scores.items()})
    return rows


def _summaries(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The set-level part of results.json: mean/std of the model and of each reference."""
    out: dict[str, Any] = {}
    for prefix in ("", "baseline_", "autoencoder_", "latent_copy_"):
        out[f"{prefix}mean"], out[f"{prefix}std"] = _summary(rows, prefix)
    out["motion_fraction_mean"] = mean_std([r["motion_fraction"] for r in rows])[0]
    out["n_static"] = sum(1 for r in rows if r["motion_fraction"] == 0.0)
    return out


def _log_scores(log: LogFn, out_dir: Path, s: Mapping[str, Any], n: int) -> None:
    mean, std, base, lc, ae = s["mean"], s["std"], s["baseline_mean"], s["latent_copy_mean"], s["autoencoder_mean"]
    log(f"{out_dir}: SSIM {mean['ssim']:.4f} +- {std['ssim']:.4f}, PSNR {mean['psnr']:.2f} +- "
        f"{std['psnr']:.2f} dB (copy-frame {base['ssim']:.4f} / {base['psnr']:.2f} dB, latent copy "
        f"{lc['ssim']:.4f} / {lc['psnr']:.2f} dB, VAE ceiling {ae['ssim']:.4f} / "
        f"{ae['psnr']:.2f} dB); motion-region PSNR {mean['motion_psnr']:.2f} dB (latent copy "
        f"{lc['motion_psnr']:.2f}, copy-frame {base['motion_psnr']:.2f}, ceiling "
        f"{ae['motion_psnr']:.2f}), n={n}")


def evaluate_model(model_dir: str | os.PathLike, cache: Any, entries: Sequence[Mapping],
                   config: SamplingConfig, out_dir: str | os.PathLike, *,
                   progress_override: Optional[Mapping[str, float]] = None,
                   extra_metadata: Optional[Mapping[str, Any]] = None,
                   log: Optional[LogFn] = None) -> EvalResult:
    """Sample `model_dir` on the selected `entries`, write the output folder to `out_dir` (atomically,
    results.json last) and return the scores. `progress_override` ({video_id: PAC-Net percent}) is
    used only with `config.add_progress`; `extra_metadata` is stored as results.json["metadata"].
    ValueError when no entry is eligible."""
    from pecn_ml.models.pix2pix import latent_target

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    chosen, skipped = select_samples(cache, entries, config.input_idx, config.target_idx, config.num_samples,
                                     add_progress=config.add_progress, progress_override=progress_override,
                                     prompt_text=config.prompt_text, shuffle_seed=config.progress_shuffle_seed,
                                     selection_seed=config.selection_seed)
    if not chosen:
        reasons = sorted(set(skipped.values()))[:5]
        raise ValueError(f"no eligible sample among {len(entries)} eval entries for frames "
                         f"{config.input_idx}->{config.target_idx} (reasons: {reasons})")
    device, dtype = resolve_device_dtype(config)
    dtype_name = str(dtype).replace("torch.", "")
    pipe = load_pipeline(model_dir, device, dtype)
    ckpt_sha, target_kind = checkpoint_sha256(model_dir), latent_target(model_dir)
    if log:
        log(f"evaluating {model_dir} on {len(chosen)} samples ({len(skipped)} skipped), frames "
            f"{config.input_idx}->{config.target_idx}, {device} {dtype_name}, latent target {target_kind!r}")
    with atomic_dir(out_dir) as tmp:  # also removes temp folders of killed writers
        for sub in SUBDIRS:
            (tmp / sub).mkdir()
        rows: list[dict] = []
        grid_rows: list = []
        meter = ProgressMeter(f"sampling {out_dir.name}", len(chosen), log, unit="samples")
        for i in range(0, len(chosen), config.batch_size):
            batch = chosen[i:i + config.batch_size]
            rows += _sample_batch(pipe, cache, batch, config, target_kind, tmp, grid_rows)
            meter.update(len(batch), extra=f"last SSIM {rows[-1]['ssim']:.4f}")
        summary = _summaries(rows)
        save_png(stack_vertical(grid_rows), tmp / "comparison_grid.png")
        results = {
            "format_version": RESULTS_FORMAT_VERSION, "samples": rows, "n": len(rows),
            "n_requested": config.num_samples, **summary,
            "selection": selection_record(chosen, config.selection_seed, config.target_idx),
            "config": {**asdict(config), "resolved_device": str(device), "resolved_dtype": dtype_name,
                       "progress_source": progress_source_text(config, progress_override is not None),
                       **_cache_config(cache), "std_ddof": 0,
                       "sample_seed": "first 8 bytes of sha256('{seed}:{video_id}') & (2**63-1)"},
            "skipped": skipped, "model_dir": str(model_dir), "checkpoint_sha256": ckpt_sha,
            "metadata": json.loads(json.dumps(dict(extra_metadata or {}), default=str)),
        }
        write_json_atomic(tmp / "results.json", results)
    if log:
        _log_scores(log, out_dir, summary, len(rows))
    return EvalResult(out_dir=out_dir, results_json=out_dir / "results.json", grid_png=out_dir / "comparison_grid.png",
                      **summary, n=len(rows), samples=rows, skipped=skipped, checkpoint_sha256=ckpt_sha,
                      config=results["config"])
