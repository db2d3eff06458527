"""SSIM, PSNR and motion-region scores of predicted frames against ground truth, on 8-bit RGB images.

uint8 (H, W, 3) or (B, H, W, 3) images become float64 RGB in [0, 1]; one score per image (callers
average with `mean_std`). SSIM and PSNR are torchmetrics' (11 x 11 Gaussian, sigma 1.5, reflect
padding; not skimage's defaults, see docs/OPERATIONS.md); every PSNR is capped at `PSNR_CAP_DB`
so identical images stay finite. Motion region: |target - input| > `MOTION_THRESHOLD` levels in a
channel, dilated `MOTION_DILATION_PX` px; one mask per sample for every method; an empty mask
scores the whole frame (`motion_fraction` 0.0 records it). The settings go into results.json
(`METRIC_SETTINGS`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

PSNR_CAP_DB = 100.0
MOTION_THRESHOLD = 8          # 8-bit levels: |target - input| > 8 in a channel is "changed"
MOTION_DILATION_PX = 2        # square (2 * 2 + 1) x (2 * 2 + 1) = 5 x 5 structuring element

SSIM_SETTINGS = {"gaussian_kernel": True, "kernel_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03, "data_range": 1.0}

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


def _uint8_rgb(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"{name} must be a uint8 (H, W, 3) or (B, H, W, 3) RGB image, got {arr.dtype} {arr.shape}")
    return arr


def _single(out: np.ndarray, single: bool) -> float | np.ndarray:
    return float(out[0]) if single else out


def _as_batch(pred: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """uint8 (H, W, 3) or (B, H, W, 3) pairs -> float64 (B, 3, H, W) in [0, 1], and 'was single'."""
    pred, target = _uint8_rgb("pred", pred), _uint8_rgb("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    single = pred.ndim == 3
    if single:
        pred, target = pred[None], target[None]
    if pred.shape[1] < 11 or pred.shape[2] < 11:
        raise ValueError(f"images must be at least 11 x 11 for an 11-tap SSIM window, got {pred.shape[1:3]}")
    p, t = (torch.from_numpy(a.astype(np.float64) / 255.0).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)
            for a in (pred, target))
    return p, t, single


def ssim(pred: np.ndarray, target: np.ndarray) -> float | np.ndarray:
    """SSIM of uint8 RGB image(s): one (H, W, 3) pair -> float, (B, H, W, 3) batches -> array (B,)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t, single = _as_batch(pred, target)
    scores = structural_similarity_index_measure(p, t, reduction="none", **SSIM_SETTINGS)  # (B,)
    return _single(scores.numpy().astype(np.float64), single)


def _capped(out: np.ndarray, cap_db: Optional[float]) -> np.ndarray:
    return out if cap_db is None else np.minimum(out, float(cap_db))


def psnr(pred: np.ndarray, target: np.ndarray, cap_db: Optional[float] = PSNR_CAP_DB) -> float | np.ndarray:
    """PSNR (dB, data range 1.0) of uint8 RGB image(s), capped at `cap_db` (None: identical images give inf)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t, single = _as_batch(pred, target)
    scores = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))  # (B,)
    return _single(_capped(scores.numpy().astype(np.float64), cap_db), single)


def motion_mask(inp: np.ndarray, target: np.ndarray, dilation: int = MOTION_DILATION_PX) -> np.ndarray:
    """uint8 (H, W, 3) or (B, H, W, 3) frame pair(s) -> bool (H, W) or (B, H, W): changed by more than
    `MOTION_THRESHOLD` levels in a channel, dilated by `dilation` px (square); empty masks stay empty."""
    inp, target = _uint8_rgb("input", inp), _uint8_rgb("target", target)
    if inp.shape != target.shape:
        raise ValueError(f"input and target shapes differ: {inp.shape} vs {target.shape}")
    diff = np.abs(target.astype(np.int16) - inp.astype(np.int16))     # (..., H, W, 3)
    changed = (diff > MOTION_THRESHOLD).any(axis=-1)                   # (..., H, W)
    if dilation <= 0:
        return changed
    square = np.ones((1,) * (changed.ndim - 2) + (2 * int(dilation) + 1,) * 2, dtype=bool)  # per image
    return ndimage.binary_dilation(changed, structure=square)           # False beyond the border


def _masked_mean(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, err) -> tuple[np.ndarray, bool]:
    """Per image, the mean of err(pred - target) over the masked pixels x 3 channels (an empty mask
    counts as the whole frame), in [0, 1] units; and 'was single'."""
    pred, target = _uint8_rgb("pred", pred), _uint8_rgb("target", target)
    mask = np.asarray(mask, dtype=bool)
    if pred.shape != target.shape or mask.shape != pred.shape[:-1]:
        raise ValueError(f"pred {pred.shape}, target {target.shape} and mask {mask.shape} do not match")
    single = pred.ndim == 3
    if single:
        pred, target, mask = pred[None], target[None], mask[None]
    mask = mask.copy()
    mask[~mask.any(axis=(1, 2))] = True                                # empty mask -> whole frame
    e = err(pred.astype(np.float64) / 255.0 - target.astype(np.float64) / 255.0).sum(axis=-1)  # (B, H, W)
    return (e * mask).sum(axis=(1, 2)) / (3.0 * mask.sum(axis=(1, 2))), single  # (B,)


def motion_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray,
                cap_db: Optional[float] = PSNR_CAP_DB) -> float | np.ndarray:
    """PSNR (dB) over the masked pixels, capped like `psnr`: (H, W, 3) + (H, W) -> float; batches -> (B,)."""
    mse, single = _masked_mean(pred, target, mask, np.square)
    with np.errstate(divide="ignore"):
        return _single(_capped(10.0 * np.log10(1.0 / mse), cap_db), single)


def motion_mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float | np.ndarray:
    """Mean |pred - target| in [0, 1] units over the masked pixels: one pair -> float; batches -> (B,)."""
    return _single(*_masked_mean(pred, target, mask, np.abs))


def motion_fraction(mask: np.ndarray) -> float | np.ndarray:
    """Share of the pixels in the motion mask (before the empty-mask fallback): (H, W) -> float, batches -> (B,)."""
    mask = np.asarray(mask, dtype=bool)
    out = mask.reshape(-1, mask.shape[-2] * mask.shape[-1]).mean(axis=1).astype(np.float64)
    return _single(out, mask.ndim == 2)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std with ddof=0) of per-image scores; (nan, nan) when empty."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=0))
