"""SSIM / PSNR against independent numpy/scipy implementations on known images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from pecn_ml.metrics import (PSNR_CAP_DB, mean_std, motion_fraction, motion_mae, motion_mask, motion_psnr,
                             psnr, ssim)


def _images(seed: int, shape=(40, 48, 3)) -> tuple[np.ndarray, np.ndarray]:
    """A structured image (gradients + a square) and a noisy, shifted copy of it."""
    rng = np.random.default_rng(seed)
    h, w, _ = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255.0 / w, yy * 255.0 / h, (xx + yy) * 127.0 / (h + w)], axis=-1)
    base[h // 4:h // 2, w // 3:w // 2] = [250, 20, 90]
    a = base.round().astype(np.uint8)
    b = np.clip(np.roll(base, 2, axis=1) + rng.normal(0, 12, shape), 0, 255).round().astype(np.uint8)
    return a, b


def _ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return 10 * math.log10(1.0 / mse)


def _ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Gaussian-window SSIM: 11 taps, sigma 1.5, K1 0.01, K2 0.03, L = 1, mirror-padded borders,
    averaged over all pixels and channels (independent of torchmetrics)."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()

    def blur(img):  # separable gaussian, mirror (reflect without edge repeat) borders
        return ndimage.correlate1d(ndimage.correlate1d(img, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for c in range(3):
        p, t = a[..., c].astype(np.float64) / 255, b[..., c].astype(np.float64) / 255
        mp, mt = blur(p), blur(t)
        vp = np.maximum(blur(p * p) - mp ** 2, 0)
        vt = np.maximum(blur(t * t) - mt ** 2, 0)
        cov = blur(p * t) - mp * mt
        s = ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp ** 2 + mt ** 2 + c1) * (vp + vt + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psnr_matches_numpy_formula(seed):
    # torchmetrics converts ln to log10 with a float32 constant: ~5e-8 relative, 1e-6 dB here
    a, b = _images(seed)
    assert psnr(b, a) == pytest.approx(_ref_psnr(b, a), abs=1e-5)


def test_psnr_known_value():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b += 10  # every value off by 10/255: PSNR = 20 log10(255/10)
    assert psnr(b, a) == pytest.approx(20 * math.log10(25.5), abs=1e-5)


def test_psnr_identical_is_capped_or_inf():
    a, _ = _images(0)
    assert psnr(a, a) == PSNR_CAP_DB == 100.0
    assert psnr(a, a, cap_db=None) == math.inf
    b = a.copy()
    b[0, 0, 0] ^= 1  # one level in one value: the largest finite 8-bit PSNR, below the cap
    expected = 10 * math.log10(255 ** 2 * a.size)
    assert psnr(b, a) == pytest.approx(expected, abs=1e-5)
    assert psnr(b, a) < PSNR_CAP_DB


@pytest.mark.parametrize("seed", [0, 3])
def test_ssim_matches_reference_implementation(seed):
    a, b = _images(seed)
    ref = _ref_ssim(b, a)
    assert 0.05 < ref < 0.95  # a meaningful, non-trivial value
    assert ssim(b, a) == pytest.approx(ref, abs=1e-9)


def test_ssim_reference_on_constant_and_random_images():
    rng = np.random.default_rng(5)
    flat = np.full((24, 24, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    assert ssim(noise, flat) == pytest.approx(_ref_ssim(noise, flat), abs=1e-9)
    assert ssim(flat, flat) == pytest.approx(1.0, abs=1e-12)


def test_identical_images_give_ssim_one():
    a, _ = _images(1)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_batches_give_per_image_scores():
    pairs = [_images(s) for s in range(3)]
    preds = np.stack([p[1] for p in pairs])
    targets = np.stack([p[0] for p in pairs])
    s, p = ssim(preds, targets), psnr(preds, targets)
    assert s.shape == p.shape == (3,)
    for i, (t, pr) in enumerate(pairs):
        assert s[i] == pytest.approx(ssim(pr, t), abs=1e-12)
        assert p[i] == pytest.approx(psnr(pr, t), abs=1e-12)


def test_bad_inputs_raise_clear_errors():
    a, b = _images(0)
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), b)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:-1])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        psnr(a[..., 0], b[..., 0])
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(a[:8, :8], b[:8, :8])


def test_mean_std():
    m, s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(np.std([1, 2, 3, 4]))
    assert all(math.isnan(v) for v in mean_std([]))


# ----------------------------------------------------------------------------- motion region


def test_motion_mask_threshold_and_square_dilation():
    inp = np.full((20, 20, 3), 100, np.uint8)
    tgt = inp.copy()
    tgt[10, 10, 1] = 109      # 9 levels in one channel: changed
    tgt[3, 3] = 108           # 8 levels in every channel: not changed (strictly more than 8)
    tgt[0, 19, 2] = 0         # a corner pixel: the dilation stops at the border
    mask = motion_mask(inp, tgt)
    assert mask.dtype == bool and mask.shape == (20, 20)
    expected = np.zeros((20, 20), bool)
    expected[8:13, 8:13] = True   # 5 x 5 square around (10, 10)
    expected[0:3, 17:20] = True   # 3 x 3 inside the image around (0, 19)
    assert np.array_equal(mask, expected)
    assert motion_fraction(mask) == pytest.approx((25 + 9) / 400)
    assert not motion_mask(inp, inp).any()
    # dilation is symmetric: a decrease by 9 is motion too
    assert motion_mask(tgt, inp)[10, 10] and not motion_mask(inp, tgt, dilation=0)[9, 10]


def test_motion_mask_batches_equal_single_masks():
    pairs = [_images(s) for s in range(3)]
    inps, tgts = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    masks = motion_mask(inps, tgts)
    assert masks.shape == (3, 40, 48)
    for i, (a, b) in enumerate(pairs):
        assert np.array_equal(masks[i], motion_mask(a, b))
    assert np.allclose(motion_fraction(masks), [motion_fraction(m) for m in masks])


def test_motion_psnr_and_mae_known_values():
    tgt = np.full((20, 20, 3), 100, np.uint8)
    pred = tgt.copy()
    pred[:10] += 10            # top half off by 10 levels in every channel
    mask = np.zeros((20, 20), bool)
    mask[:5] = True            # only erroneous pixels in the region
    assert motion_psnr(pred, tgt, mask) == pytest.approx(20 * math.log10(25.5), abs=1e-9)
    assert motion_mae(pred, tgt, mask) == pytest.approx(10 / 255, abs=1e-12)
    mask[10:15] = True         # half the region exact: MSE and MAE halve
    assert motion_psnr(pred, tgt, mask) == pytest.approx(10 * math.log10(2 * 255 ** 2 / 100), abs=1e-9)
    assert motion_mae(pred, tgt, mask) == pytest.approx(5 / 255, abs=1e-12)
    only_exact = np.zeros((20, 20), bool)
    only_exact[15:] = True     # no error in the region: capped like psnr
    assert motion_psnr(pred, tgt, only_exact) == PSNR_CAP_DB and motion_mae(pred, tgt, only_exact) == 0.0
    assert motion_psnr(pred, tgt, only_exact, cap_db=None) == math.inf


def test_empty_mask_falls_back_to_the_whole_frame():
    a, b = _images(2)
    empty = np.zeros(a.shape[:2], bool)
    assert motion_psnr(b, a, empty) == pytest.approx(psnr(b, a), abs=1e-5)
    assert motion_mae(b, a, empty) == pytest.approx(np.abs(b / 255.0 - a / 255.0).mean(), abs=1e-12)
    assert motion_fraction(empty) == 0.0
    full = np.ones(a.shape[:2], bool)
    assert motion_psnr(b, a, full) == pytest.approx(psnr(b, a), abs=1e-5)


def test_motion_scores_batch_and_bad_inputs():
    pairs = [_images(s) for s in range(3)]
    preds, tgts = np.stack([p[1] for p in pairs]), np.stack([p[0] for p in pairs])
    masks = motion_mask(preds, tgts)
    masks[1] = False           # one empty mask in the batch: only that sample falls back
    mp, ma = motion_psnr(preds, tgts, masks), motion_mae(preds, tgts, masks)
    assert mp.shape == ma.shape == (3,)
    for i in range(3):
        assert mp[i] == motion_psnr(preds[i], tgts[i], masks[i]) and ma[i] == motion_mae(preds[i], tgts[i], masks[i])
    assert mp[1] == pytest.approx(psnr(preds[1], tgts[1]), abs=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        motion_psnr(preds, tgts, masks[:, :-1])
    with pytest.raises(ValueError, match="uint8"):
        motion_mask(preds.astype(np.float32), tgts)
