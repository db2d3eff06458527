"""SSIM and PSNR of predicted frames against ground truth, on 8-bit RGB images.

Both metrics take uint8 arrays, (H, W, 3) for one image or (B, H, W, 3) for a batch, convert
them to float64 RGB in [0, 1] (value / 255) and call torchmetrics' functional metrics, one
score per image. Callers average the per-image scores themselves (`mean_std`).

SSIM (`torchmetrics.functional.structural_similarity_index_measure`), exactly:
  gaussian window, sigma 1.5, 11 x 11 taps (torchmetrics derives 2*int(3.5*sigma+0.5)+1 = 11),
  normalised to sum 1; k1 = 0.01, k2 = 0.03; data_range = 1.0 (C1 = 0.01^2, C2 = 0.03^2);
  each image padded by 5 px with mirror ("reflect", edge not repeated) padding so the local
  statistics exist at every pixel; the SSIM map is averaged over all H x W pixels and the 3
  channels (each channel filtered separately) -> one score per image. Identical images give 1.0.

How this differs from scikit-image (`skimage.metrics.structural_similarity`), so numbers can be
compared with papers that used it. skimage's *defaults* are another SSIM: a 7 x 7 *uniform*
window (`win_size=7, gaussian_weights=False`), sample covariances (`use_sample_covariance=True`,
divides by N - 1), no padding (the mean is taken over the image minus a 3 px border), and color
only with `channel_axis=-1` (without it an (H, W, 3) array is treated as a 3-D volume). On
natural frames the default typically scores lower than ours (flat windows weigh edges more).
The closest skimage call to ours is `structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)` on float images in
[0, 1] (the Wang et al. 2004 setting): the same 11 x 11 Gaussian and constants; it still
averages only the interior (5 px border cropped) where we pad by reflection and average every
pixel, so the two agree closely but not to the last digit. Never mix the two in one table.

PSNR (`torchmetrics.functional.peak_signal_noise_ratio`):
  10 * log10(1 / MSE), MSE over all H x W x 3 values of one image, data_range = 1.0 (torchmetrics
  converts ln to log10 with a float32 constant: results agree with numpy to ~1e-6 dB).
  Identical images have MSE 0 and an infinite PSNR; we cap every PSNR at `PSNR_CAP_DB`
  (100 dB) so means, standard deviations and JSON stay finite. For 8-bit images the largest
  finite PSNR is 10*log10(255^2 * H * W * 3) (one pixel off by one level): 99.9 dB at 224 x 224,
  91.9 dB at 96 x 96, so the cap only ever replaces "identical". Pass `cap_db=None` for inf.

Motion region (`motion_mask`, `motion_psnr`, `motion_mae`): where a prediction can beat copying
the input frame. Per sample, from the 8-bit input frame and the 8-bit target (ground truth):
  changed = |target - input| > `MOTION_THRESHOLD` (8 levels = 8/255) in at least one channel;
  mask = changed dilated by `MOTION_DILATION_PX` (2) px with a square 5 x 5 structuring element
  (a pixel is in the mask when a changed pixel lies within 2 px in x and in y; pixels beyond the
  image border count as unchanged). One mask per sample, used for every method scored on it
  (model, latent copy, copy frame, autoencoder ceiling), so their motion scores are paired.
  motion PSNR = 10 * log10(1 / MSE), MSE over the masked pixels x 3 channels, data range 1.0,
  capped at `PSNR_CAP_DB` like `psnr` (computed in float64 numpy: equal to `psnr` to ~1e-6 dB
  when the mask is the whole frame).
  motion MAE = mean |pred - target| over the masked pixels x 3 channels, in [0, 1] units
  (value / 255; multiply by 255 for 8-bit levels).
  An empty mask (nothing changed by more than 8 levels: a static pair) falls back to the whole
  frame: its motion scores equal the whole-frame PSNR / MAE, so every sample has a finite score
  and stays in the paired tests and the means. `motion_fraction` (mask pixels / all pixels, 0.0
  for such a sample) is recorded per sample, so static samples can be found and left out.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

PSNR_CAP_DB = 100.0
MOTION_THRESHOLD = 8          # 8-bit levels: |target - input| > 8 in a channel is "changed"
MOTION_DILATION_PX = 2        # square (2 * 2 + 1) x (2 * 2 + 1) = 5 x 5 structuring element

SSIM_SETTINGS = {
    "gaussian_kernel": True,
    "kernel_size": 11,
    "sigma": 1.5,
    "k1": 0.01,
    "k2": 0.03,
    "data_range": 1.0,
}

METRIC_SETTINGS = {
    "input": "8-bit RGB images (the saved PNGs) as float64 value/255 in [0, 1]",
    "ssim": {**SSIM_SETTINGS, "padding": "reflect (mirror) 5 px; map averaged over H, W and channels",
             "reduction": "per image, then averaged over images"},
    "psnr": {"data_range": 1.0, "mse_over": "H x W x 3 of one image", "cap_db": PSNR_CAP_DB,
             "reduction": "per image, then averaged over images"},
    "motion_region": {"mask": f"|target - input| > {MOTION_THRESHOLD}/255 in any channel, dilated "
                              f"{MOTION_DILATION_PX} px (square {2 * MOTION_DILATION_PX + 1} x "
                              f"{2 * MOTION_DILATION_PX + 1}); one mask per sample for every method",
                      "motion_psnr": f"PSNR over the masked pixels x 3 channels, data range 1.0, cap {PSNR_CAP_DB}",
                      "motion_mae": "mean |pred - target| over the masked pixels x 3 channels, [0, 1] units",
                      "empty_mask": "whole frame (motion_fraction 0.0 records it)"},
}


def _as_batch(pred: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """uint8 (H, W, 3) or (B, H, W, 3) pairs -> float64 (B, 3, H, W) in [0, 1], and 'was single'."""
    pred, target = np.asarray(pred), np.asarray(target)
    for name, arr in (("pred", pred), ("target", target)):
        if arr.dtype != np.uint8:
            raise ValueError(f"{name} must be a uint8 image, got dtype {arr.dtype}")
        if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
            raise ValueError(f"{name} must be (H, W, 3) or (B, H, W, 3) RGB, got shape {arr.shape}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    single = pred.ndim == 3
    if single:
        pred, target = pred[None], target[None]
    if pred.shape[1] < 11 or pred.shape[2] < 11:
        raise ValueError(f"images must be at least 11 x 11 for an 11-tap SSIM window, got {pred.shape[1:3]}")

    def conv(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float64) / 255.0).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)

    return conv(pred), conv(target), single


def ssim(pred: np.ndarray, target: np.ndarray) -> float | np.ndarray:
    """SSIM of uint8 RGB image(s) against ground truth (settings: module docstring).

    One (H, W, 3) pair -> float; (B, H, W, 3) batches -> float64 array (B,) of per-image scores.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t, single = _as_batch(pred, target)
    scores = structural_similarity_index_measure(
        p, t, gaussian_kernel=True, sigma=SSIM_SETTINGS["sigma"], kernel_size=SSIM_SETTINGS["kernel_size"],
        reduction="none", data_range=SSIM_SETTINGS["data_range"], k1=SSIM_SETTINGS["k1"],
        k2=SSIM_SETTINGS["k2"],
    )  # (B,)
    out = scores.numpy().astype(np.float64)
    return float(out[0]) if single else out


def psnr(pred: np.ndarray, target: np.ndarray, cap_db: Optional[float] = PSNR_CAP_DB) -> float | np.ndarray:
    """PSNR in dB of uint8 RGB image(s) against ground truth, data range 1.0, capped at `cap_db`.

    One (H, W, 3) pair -> float; (B, H, W, 3) batches -> float64 array (B,). Identical images give
    `cap_db` (100.0), or inf with `cap_db=None`.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t, single = _as_batch(pred, target)
    scores = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))  # (B,)
    out = scores.numpy().astype(np.float64)
    if cap_db is not None:
        out = np.minimum(out, float(cap_db))
    return float(out[0]) if single else out


def _uint8_rgb(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"{name} must be a uint8 (H, W, 3) or (B, H, W, 3) RGB image, got {arr.dtype} {arr.shape}")
    return arr


def motion_mask(inp: np.ndarray, target: np.ndarray, threshold: int = MOTION_THRESHOLD,
                dilation: int = MOTION_DILATION_PX) -> np.ndarray:
    """The motion region of input/target frame pair(s) (definition: module docstring).

    uint8 (H, W, 3) or (B, H, W, 3) -> bool (H, W) or (B, H, W): changed by more than `threshold`
    levels in a channel, dilated by `dilation` px with a square structuring element. Empty masks are
    returned as they are (the scores fall back to the whole frame, see `motion_psnr`)."""
    inp, target = _uint8_rgb("input", inp), _uint8_rgb("target", target)
    if inp.shape != target.shape:
        raise ValueError(f"input and target shapes differ: {inp.shape} vs {target.shape}")
    diff = np.abs(target.astype(np.int16) - inp.astype(np.int16))     # (..., H, W, 3)
    changed = (diff > int(threshold)).any(axis=-1)                      # (..., H, W)
    if dilation <= 0:
        return changed
    h, w, d = changed.shape[-2], changed.shape[-1], int(dilation)
    pad = [(0, 0)] * (changed.ndim - 2) + [(d, d), (d, d)]
    padded = np.pad(changed, pad)                                       # False beyond the border
    rows = np.zeros(padded.shape[:-1] + (w,), dtype=bool)               # max over a 1 x (2d+1) window
    for dx in range(2 * d + 1):
        rows |= padded[..., dx:dx + w]
    out = np.zeros(changed.shape, dtype=bool)                           # then over (2d+1) x 1
    for dy in range(2 * d + 1):
        out |= rows[..., dy:dy + h, :]
    return out


def _masked(pred: np.ndarray, target: np.ndarray, mask: np.ndarray):
    """float64 [0, 1] (B, H, W, 3) pred/target, the (B, H, W) mask with empty ones set to the whole
    frame, and 'was single'."""
    pred, target = _uint8_rgb("pred", pred), _uint8_rgb("target", target)
    mask = np.asarray(mask, dtype=bool)
    if pred.shape != target.shape or mask.shape != pred.shape[:-1]:
        raise ValueError(f"pred {pred.shape}, target {target.shape} and mask {mask.shape} do not match")
    single = pred.ndim == 3
    if single:
        pred, target, mask = pred[None], target[None], mask[None]
    mask = mask.copy()
    mask[~mask.any(axis=(1, 2))] = True                                # empty mask -> whole frame
    return pred.astype(np.float64) / 255.0, target.astype(np.float64) / 255.0, mask, single


def motion_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray,
                cap_db: Optional[float] = PSNR_CAP_DB) -> float | np.ndarray:
    """PSNR in dB over the masked pixels x 3 channels (data range 1.0, capped like `psnr`); an
    empty mask scores the whole frame. (H, W, 3) + (H, W) -> float; batches -> array (B,)."""
    p, t, m, single = _masked(pred, target, mask)
    sq = ((p - t) ** 2).sum(axis=-1)                                    # (B, H, W), summed over channels
    mse = (sq * m).sum(axis=(1, 2)) / (3.0 * m.sum(axis=(1, 2)))        # (B,)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(1.0 / mse)
    if cap_db is not None:
        out = np.minimum(out, float(cap_db))
    return float(out[0]) if single else out


def motion_mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float | np.ndarray:
    """Mean absolute error in [0, 1] units over the masked pixels x 3 channels; an empty mask
    scores the whole frame. (H, W, 3) + (H, W) -> float; batches -> array (B,)."""
    p, t, m, single = _masked(pred, target, mask)
    ab = np.abs(p - t).sum(axis=-1)                                     # (B, H, W)
    out = (ab * m).sum(axis=(1, 2)) / (3.0 * m.sum(axis=(1, 2)))        # (B,)
    return float(out[0]) if single else out


def motion_fraction(mask: np.ndarray) -> float | np.ndarray:
    """Share of the pixels in the motion mask (before the empty-mask fallback): (H, W) -> float,
    (B, H, W) -> array (B,)."""
    mask = np.asarray(mask, dtype=bool)
    out = mask.reshape(-1, mask.shape[-2] * mask.shape[-1]).mean(axis=1).astype(np.float64)
    return float(out[0]) if mask.ndim == 2 else out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std with ddof=0) of per-image scores; (nan, nan) when empty."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=0))
