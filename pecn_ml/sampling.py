"""Sample a trained InstructPix2Pix variant on an eval set; score it and the copy-frame baseline.

What the seed's evaluate.sh + sample_from_pix2pix.py + ssim.py do, as library code:

* which samples: the first `num_samples` *eligible* entries of the eval annotations, in file order.
  Eligible = cached in the frame cache and `num_frames > target_idx` (and, when PAC-Net estimates
  are used for progress prompts, having an estimate). Every entry looked at before the selection
  was complete and not taken is recorded in `skipped` with its reason.
* prompts: `build_prompt(label, progress)`; progress = `progress_percent(input_idx, num_frames)`,
  or PAC-Net's estimate from `progress_override` (the seed's USE_PROGRESS_ESTIMATOR).
* randomness: every sample has its own `torch.Generator` (on the CPU) seeded with
  `sample_seed(seed, video_id)` (sha256, not Python's salted `hash`), so a sample's noise does not
  depend on the batch size, the batch it lands in or the order of the annotations.
  Floating point does, slightly: CPU/GPU kernels pick different algorithms for different batch
  sizes, which moves outputs by ~1e-6 and can flip an 8-bit rounding by one level (measured with
  the tiny model: <1% of values on CPU fp32; 12% on an H100 in fp16, mean metric change ~1e-5).
  The same config on the same machine and dtype gives bit-identical images; fp16 and fp32 give
  different images (do not compare runs across dtypes; the dtype is recorded in results.json).
* metrics: SSIM and PSNR (`pecn_ml.metrics`, settings there) per sample, computed from the saved
  8-bit PNGs, at the cache resolution; the same metrics for "output = input frame" (the copy-frame
  baseline, what a model must beat) and for "output = decode(encode(target))" through the model's
  own VAE (the autoencoder ceiling: a latent model cannot reproduce the target better than its VAE
  round trip, so this bounds every output; at the demo's scale the copy-frame baseline lies above
  that ceiling and is not expected to be beaten).

Output folder (the seed's layout plus `input/` and `autoencoder/`; written to a temp folder, renamed
at the end):
  input/{id}.png  target/{id}.png  output/{id}.png  autoencoder/{id}.png (VAE round trip of the target)
  comparison/{id}.png (Input | GT | Output | VAE(GT))
  comparison_grid.png (first GRID_ROWS comparisons)  results.json (written last).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from pecn_ml.images import comparison_grid, load_png, save_png, stack_vertical
from pecn_ml.metrics import METRIC_SETTINGS, mean_std, psnr, ssim
from pecn_ml.training.autoencoder import roundtrip
from pecn_ml.prompts import PROMPT_TEXTS, action_text, build_prompt, progress_percent
from pecn_ml.utils.files import atomic_dir, sha256_file, sha256_json, write_json_atomic
from pecn_ml.utils.progress import ProgressMeter

LogFn = Callable[[str], None]

DEFAULT_RESULTS_ROOT = "test_result"
RESULTS_FORMAT_VERSION = 1
GRID_ROWS = 4                     # comparisons stacked in comparison_grid.png
SUBDIRS = ("input", "target", "output", "autoencoder", "comparison")
METRICS = ("ssim", "psnr")
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class SamplingConfig:
    """Evaluation settings; defaults are the seed's evaluate.sh table (frame 20 -> 21, 100 samples,
    25 steps, image guidance 1.5, text guidance 7.5 = the pipeline's default, seed 42)."""

    input_idx: int = 20                  # 0-based input frame
    target_idx: int = 21                 # 0-based ground-truth frame (21 or 25)
    num_samples: int = 100               # first N eligible videos of the eval set, file order
    num_inference_steps: int = 25
    image_guidance_scale: float = 1.5
    guidance_scale: float = 7.5          # text guidance
    seed: int = 42
    batch_size: int = 8                  # samples per pipeline call
    add_progress: bool = False           # append "And N% of the action has been completed."
    prompt_text: str = "class"           # action text: "class" (template, seed) or "label"
    device: str = "auto"                 # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"                  # "auto" (fp16 on cuda, fp32 on cpu), "float32", "float16", "bfloat16"

    def __post_init__(self):
        if not (isinstance(self.input_idx, int) and self.input_idx >= 0):
            raise ValueError(f"SamplingConfig.input_idx must be an int >= 0, got {self.input_idx!r}")
        if not (isinstance(self.target_idx, int) and self.target_idx > self.input_idx):
            raise ValueError(f"SamplingConfig.target_idx must be an int > input_idx ({self.input_idx}), "
                             f"got {self.target_idx!r}")
        for name in ("num_samples", "num_inference_steps", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"SamplingConfig.{name} must be an int >= 1, got {v!r}")
        if self.prompt_text not in PROMPT_TEXTS:
            raise ValueError(f"SamplingConfig.prompt_text must be one of {PROMPT_TEXTS}, got {self.prompt_text!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"SamplingConfig.dtype must be auto/float32/float16/bfloat16, got {self.dtype!r}")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            raise ValueError(f"SamplingConfig.device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")

    @classmethod
    def demo(cls, **overrides: Any) -> "SamplingConfig":
        """8 evaluations of the demo's models at 96 px in about a minute on 2 CPU cores: 24
        samples, 10 denoising steps, batches of 8."""
        return replace(cls(num_samples=24, num_inference_steps=10, batch_size=8), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate_model` wrote and measured (metric dicts are keyed "ssim", "psnr")."""

    out_dir: Path
    results_json: Path
    grid_png: Optional[Path]                 # first GRID_ROWS comparisons stacked
    mean: dict[str, float]
    std: dict[str, float]
    baseline_mean: dict[str, float]
    baseline_std: dict[str, float]
    autoencoder_mean: dict[str, float]       # the VAE round trip of the targets (the ceiling)
    autoencoder_std: dict[str, float]
    n: int
    samples: list[dict]                      # rows of results.json "samples"
    skipped: dict[str, str]                  # video id -> reason
    checkpoint_sha256: str
    config: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- selection


def sample_seed(seed: int, video_id: str) -> int:
    """Generator seed of one sample: first 8 bytes of sha256("{seed}:{video_id}"), as a 63-bit int.
    Stable across processes and Python versions (unlike `hash()`)."""
    digest = hashlib.sha256(f"{int(seed)}:{video_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Selected:
    """One eligible eval entry."""

    video_id: str
    label: str
    task: str
    text: str                         # the action text in the prompt (class text or label)
    num_frames: int
    progress_percent: Optional[int]   # the number in the prompt; None without progress


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
    """Frame count, or None when `video_id` is not in the cache (KeyError / not `in cache`)."""
    if hasattr(cache, "__contains__") and video_id not in cache:
        return None
    try:
        n = cache.num_frames(video_id)
    except (KeyError, FileNotFoundError):
        return None
    return int(n) if n else None


def select_samples(cache: Any, entries: Sequence[Mapping], input_idx: int, target_idx: int,
                   num_samples: int, *, add_progress: bool = False,
                   progress_override: Optional[Mapping[str, float]] = None,
                   prompt_text: str = "class") -> tuple[list[Selected], dict[str, str]]:
    """The first `num_samples` eligible entries in file order, and {video_id: reason} of the
    entries passed over before the selection was complete (see the module docstring)."""
    assert 0 <= input_idx < target_idx, (input_idx, target_idx)
    chosen: list[Selected] = []
    skipped: dict[str, str] = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if len(chosen) >= num_samples:
            break
        vid, label, task, text = _entry_fields(entry, i, prompt_text)
        if vid in seen:
            skipped.setdefault(vid, f"duplicate id (entry {i})")
            continue
        seen.add(vid)
        n = _cached_num_frames(cache, vid)
        if n is None:
            skipped[vid] = "not in frame cache"
            continue
        if n <= target_idx:
            skipped[vid] = f"only {n} frames; frame {target_idx} (0-based) needed"
            continue
        progress: Optional[int] = None
        if add_progress:
            if progress_override is not None:
                if vid not in progress_override:
                    skipped[vid] = "no PAC-Net progress estimate"
                    continue
                est = float(progress_override[vid])
                if not (math.isfinite(est) and 0 <= est <= 100):
                    raise ValueError(f"progress estimate of video {vid} is {est!r}, not within [0, 100]")
                progress = int(est)
            else:
                progress = progress_percent(input_idx, n)
        chosen.append(Selected(vid, label, task, text, n, progress))
    return chosen, skipped


# ----------------------------------------------------------------------------- baseline


def _summary(rows: Sequence[Mapping[str, float]], prefix: str = "") -> tuple[dict, dict]:
    mean, std = {}, {}
    for m in METRICS:
        mean[m], std[m] = mean_std([r[prefix + m] for r in rows])
    return mean, std


def copy_frame_baseline(cache: Any, entries: Sequence[Mapping], input_idx: int, target_idx: int,
                        num_samples: int, *, log: Optional[LogFn] = None) -> dict[str, Any]:
    """SSIM/PSNR of "predict the input frame unchanged" on the samples `evaluate_model` would take
    (same selection rule, without progress estimates). Needs no model.

    Returns {"samples": [{"video_id", "task", "label", "ssim", "psnr"}], "mean", "std", "n",
    "n_requested", "skipped", "config"}; metric dicts are keyed "ssim", "psnr".
    """
    chosen, skipped = select_samples(cache, entries, input_idx, target_idx, num_samples,
                                     prompt_text="label")  # no prompt here: any entry will do
    meter = ProgressMeter(f"copy-frame baseline {input_idx}->{target_idx}", len(chosen), log, unit="samples")
    rows = []
    for s in chosen:
        inp, tgt = cache.frame(s.video_id, input_idx), cache.frame(s.video_id, target_idx)  # (R, R, 3)
        rows.append({"video_id": s.video_id, "task": s.task, "label": s.label,
                     "ssim": ssim(inp, tgt), "psnr": psnr(inp, tgt)})
        meter.update()
    mean, std = _summary(rows)
    return {"samples": rows, "mean": mean, "std": std, "n": len(rows), "n_requested": num_samples,
            "skipped": skipped,
            "config": {"method": "copy input frame", "input_idx": input_idx, "target_idx": target_idx,
                       "num_samples": num_samples, "cache_resolution": getattr(cache, "resolution", None),
                       "cache_version": getattr(cache, "version", None), "metrics": METRIC_SETTINGS}}


# ----------------------------------------------------------------------------- model


def resolve_device_dtype(config: SamplingConfig):
    """(torch.device, torch.dtype) for `config`: auto = CUDA fp16 when present, else CPU fp32."""
    import torch

    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if config.device == "auto" else config.device))
    if config.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, config.dtype)
    return device, dtype


def checkpoint_sha256(model_dir: str | os.PathLike) -> str:
    """sha256 of the fine-tuned UNet weights `unet/diffusion_pytorch_model.safetensors` (the only
    component training changes). Without that file: sha256 over {relative path: file sha256} of
    every file under `unet/`."""
    model_dir = Path(model_dir)
    weights = model_dir / UNET_WEIGHTS
    if weights.is_file():
        return sha256_file(weights)
    unet = model_dir / "unet"
    files = sorted(p for p in unet.rglob("*") if p.is_file()) if unet.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{model_dir}: no unet/ weights to hash (not a saved pipeline folder)")
    return sha256_json({str(p.relative_to(model_dir)): sha256_file(p) for p in files})


def load_pipeline(model_dir: str | os.PathLike, device, dtype):
    """`StableDiffusionInstructPix2PixPipeline` from a `save_pretrained` folder, no safety checker,
    progress bars off, on `device` in `dtype`."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{model_dir}: model_index.json missing; not a saved InstructPix2Pix pipeline")
    with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype to dtype; both work
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            model_dir, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def predict_batch(pipe, inputs: Sequence[np.ndarray], prompts: Sequence[str], seeds: Sequence[int],
                  config: SamplingConfig) -> np.ndarray:
    """Run the pipeline on uint8 (R, R, 3) inputs; one CPU generator per sample.
    Returns (B, R, R, 3) uint8, rounded as diffusers' own PIL conversion does."""
    import torch
    from PIL import Image

    assert len(inputs) == len(prompts) == len(seeds) > 0, (len(inputs), len(prompts), len(seeds))
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(prompt=list(prompts), image=[Image.fromarray(a) for a in inputs],
               num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
               image_guidance_scale=config.image_guidance_scale, generator=generators,
               output_type="np").images  # (B, H, W, 3) float in [0, 1]
    out = (np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    want = (len(inputs),) + inputs[0].shape
    if out.shape != want:
        raise ValueError(f"pipeline output {out.shape} differs from the input frames {want}: the "
                         f"resolution must be a multiple of the VAE scale factor {pipe.vae_scale_factor}")
    return out


# ----------------------------------------------------------------------------- evaluate


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def evaluate_model(model_dir: str | os.PathLike, cache: Any, entries: Sequence[Mapping],
                   config: SamplingConfig, out_dir: str | os.PathLike, *,
                   progress_override: Optional[Mapping[str, float]] = None,
                   extra_metadata: Optional[Mapping[str, Any]] = None,
                   log: Optional[LogFn] = None) -> EvalResult:
    """Sample `model_dir` on the selected `entries`, write the seed's output folder to `out_dir`
    and return the scores (see the module docstring for every rule).

    progress_override: {video_id: PAC-Net percent}; used for the prompts only when
    `config.add_progress` (ignored otherwise, so one mapping can be passed to every variant).
    extra_metadata: JSON-able lineage, stored as results.json["metadata"].
    The folder is built under a temp name beside `out_dir` and renamed onto it when complete;
    results.json is its last file. Raises ValueError when no entry is eligible.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    chosen, skipped = select_samples(cache, entries, config.input_idx, config.target_idx, config.num_samples,
                                     add_progress=config.add_progress, progress_override=progress_override,
                                     prompt_text=config.prompt_text)
    if not chosen:
        reasons = sorted(set(skipped.values()))[:5]
        raise ValueError(f"no eligible sample among {len(entries)} eval entries for frames "
                         f"{config.input_idx}->{config.target_idx} (reasons: {reasons})")
    device, dtype = resolve_device_dtype(config)
    pipe = load_pipeline(model_dir, device, dtype)
    ckpt_sha = checkpoint_sha256(model_dir)
    if log:
        log(f"evaluating {model_dir} on {len(chosen)} samples ({len(skipped)} skipped), "
            f"frames {config.input_idx}->{config.target_idx}, {device} {str(dtype).replace('torch.', '')}")

    with atomic_dir(out_dir) as tmp:  # also removes temp folders of killed writers
        for sub in SUBDIRS:
            (tmp / sub).mkdir()
        rows: list[dict] = []
        grid_rows = []
        meter = ProgressMeter(f"sampling {out_dir.name}", len(chosen), log, unit="samples")
        for batch in _chunks(chosen, config.batch_size):
            inputs = [cache.frame(s.video_id, config.input_idx) for s in batch]    # (R, R, 3) each
            targets = [cache.frame(s.video_id, config.target_idx) for s in batch]  # (R, R, 3) each
            prompts = [build_prompt(s.text, s.progress_percent) for s in batch]
            outputs = predict_batch(pipe, inputs, prompts, [sample_seed(config.seed, s.video_id) for s in batch],
                                    config)  # (B, R, R, 3)
            ceiling = roundtrip(pipe.vae, np.stack(targets))                       # (B, R, R, 3)
            for s, inp, tgt, out, ae, prompt in zip(batch, inputs, targets, outputs, ceiling, prompts):
                for sub, img in (("input", inp), ("target", tgt), ("output", out), ("autoencoder", ae)):
                    save_png(img, tmp / sub / f"{s.video_id}.png")
                grid = comparison_grid([inp, tgt, out, ae], ["Input", "GT", "Output", "VAE(GT)"])
                save_png(grid, tmp / "comparison" / f"{s.video_id}.png")
                if len(grid_rows) < GRID_ROWS:
                    grid_rows.append(grid)
                rows.append({"video_id": s.video_id, "task": s.task, "label": s.label, "prompt": prompt,
                             "progress_percent": s.progress_percent, "num_frames": s.num_frames})
            # Metrics from the saved files, so anyone can recompute them from the PNGs.
            saved = {sub: np.stack([load_png(tmp / sub / f"{s.video_id}.png") for s in batch])
                     for sub in ("input", "target", "output", "autoencoder")}  # each (B, R, R, 3)
            scores = {"ssim": ssim(saved["output"], saved["target"]), "psnr": psnr(saved["output"], saved["target"]),
                      "baseline_ssim": ssim(saved["input"], saved["target"]),
                      "baseline_psnr": psnr(saved["input"], saved["target"]),
                      "autoencoder_ssim": ssim(saved["autoencoder"], saved["target"]),
                      "autoencoder_psnr": psnr(saved["autoencoder"], saved["target"])}
            for j, row in enumerate(rows[-len(batch):]):
                row.update({k: float(v[j]) for k, v in scores.items()})
            meter.update(len(batch), extra=f"last SSIM {rows[-1]['ssim']:.4f}")

        mean, std = _summary(rows)
        base_mean, base_std = _summary(rows, "baseline_")
        ae_mean, ae_std = _summary(rows, "autoencoder_")
        save_png(stack_vertical(grid_rows), tmp / "comparison_grid.png")
        resolved = {"device": str(device), "dtype": str(dtype).replace("torch.", "")}
        results = {
            "format_version": RESULTS_FORMAT_VERSION,
            "samples": rows, "n": len(rows), "n_requested": config.num_samples,
            "mean": mean, "std": std, "baseline_mean": base_mean, "baseline_std": base_std,
            "autoencoder_mean": ae_mean, "autoencoder_std": ae_std,
            "config": {**config.to_dict(), **{f"resolved_{k}": v for k, v in resolved.items()},
                       "progress_source": (None if not config.add_progress else
                                           "PAC-Net estimate" if progress_override is not None else "frame count"),
                       "cache_resolution": getattr(cache, "resolution", None),
                       "cache_version": getattr(cache, "version", None),
                       "metrics": METRIC_SETTINGS, "std_ddof": 0,
                       "sample_seed": "first 8 bytes of sha256('{seed}:{video_id}') & (2**63-1)"},
            "skipped": skipped,
            "model_dir": str(model_dir),
            "checkpoint_sha256": ckpt_sha,
            "metadata": json.loads(json.dumps(dict(extra_metadata or {}), default=str)),
        }
        write_json_atomic(tmp / "results.json", results)
    if log:
        log(f"{out_dir}: SSIM {mean['ssim']:.4f} +- {std['ssim']:.4f}, PSNR {mean['psnr']:.2f} +- "
            f"{std['psnr']:.2f} dB (copy-frame {base_mean['ssim']:.4f} / {base_mean['psnr']:.2f} dB, VAE ceiling "
            f"{ae_mean['ssim']:.4f} / {ae_mean['psnr']:.2f} dB), n={len(rows)}")
    return EvalResult(out_dir=out_dir, results_json=out_dir / "results.json",
                      grid_png=out_dir / "comparison_grid.png", mean=mean, std=std, baseline_mean=base_mean,
                      baseline_std=base_std, autoencoder_mean=ae_mean, autoencoder_std=ae_std, n=len(rows), samples=rows, skipped=skipped,
                      checkpoint_sha256=ckpt_sha, config=results["config"])
