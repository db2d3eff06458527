"""Image helpers: atomic PNG I/O, labelled comparison and validation grids, loss curves."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pecn_ml.utils.files import atomic_path

ImageLike = Union[np.ndarray, Image.Image]

LABEL_HEIGHT = 14   # px of the white strip above each image in a grid
GRID_PAD = 2        # px of white between images


def as_rgb_array(img: ImageLike, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image or an (H, W, 3) uint8 array (validated, not copied)."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    return arr


def save_png(img: ImageLike, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 array or PIL image as PNG to `path`, atomically (temp + rename)."""
    path = Path(path)
    pil = img if isinstance(img, Image.Image) else Image.fromarray(as_rgb_array(img, str(path)))
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")
    return path


def load_png(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; a missing or unreadable file names the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # (H, W, 3) uint8
    except (OSError, ValueError) as err:
        raise ValueError(f"image file {path} is unreadable: {err}") from None


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def comparison_grid(images: Sequence[ImageLike], labels: Sequence[str],
                    label_height: int = LABEL_HEIGHT, pad: int = GRID_PAD) -> Image.Image:
    """One row `label_0 | label_1 | ...`, each image under a small centred black-on-white label.

    All images must have the same size (H, W). Output: (label_height + H) x (n*W + (n+1)*pad) RGB.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"comparison_grid needs one label per image, got {len(images)} images "
                         f"and {len(labels)} labels")
    arrs = [as_rgb_array(im, f"image {i}") for i, im in enumerate(images)]
    h, w = arrs[0].shape[:2]
    for i, a in enumerate(arrs):
        if a.shape[:2] != (h, w):
            raise ValueError(f"comparison_grid: image {i} is {a.shape[:2]}, image 0 is {(h, w)}")
    n = len(arrs)
    canvas = Image.new("RGB", (n * w + (n + 1) * pad, label_height + h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(max(label_height - 4, 6))
    for i, (a, text) in enumerate(zip(arrs, labels)):
        x = pad + i * (w + pad)
        canvas.paste(Image.fromarray(a), (x, label_height))
        left, top, right, bottom = draw.textbbox((0, 0), str(text), font=font)
        tx = x + max((w - (right - left)) // 2, 0) - left
        ty = max((label_height - (bottom - top)) // 2, 0) - top
        draw.text((tx, ty), str(text), fill="black", font=font)
    return canvas


def stack_vertical(rows: Sequence[ImageLike], pad: int = GRID_PAD) -> Image.Image:
    """Stack images top to bottom (left-aligned, white background), e.g. several comparison rows."""
    if len(rows) == 0:
        raise ValueError("stack_vertical needs at least one image")
    pils = [r if isinstance(r, Image.Image) else Image.fromarray(as_rgb_array(r)) for r in rows]
    width = max(p.width for p in pils)
    height = sum(p.height for p in pils) + pad * (len(pils) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    y = 0
    for p in pils:
        canvas.paste(p.convert("RGB"), (0, y))
        y += p.height + pad
    return canvas


def make_grid(rows: Sequence[Sequence[np.ndarray]], headers: Sequence[str] = ("Input", "GT", "Output"),
              captions: Optional[Sequence[str]] = None, pad: int = 4) -> Image.Image:
    """One row per sample of (R, R, 3) uint8 images under `headers`, with optional captions."""
    assert rows and all(len(r) == len(headers) for r in rows), "each row needs one image per header"
    r = rows[0][0].shape[0]
    head, cap = 14, (12 if captions else 0)
    w = len(headers) * (r + pad) + pad
    grid = Image.new("RGB", (w, head + len(rows) * (r + cap + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(headers):
        left, _, right, _ = draw.textbbox((0, 0), name)
        draw.text((pad + j * (r + pad) + max(0, (r - (right - left)) // 2), 1), name, fill=(0, 0, 0))
    for i, images in enumerate(rows):
        y = head + i * (r + cap + pad)
        for j, img in enumerate(images):
            grid.paste(Image.fromarray(img), (pad + j * (r + pad), y))
        if captions:
            draw.text((pad, y + r), captions[i][: max(8, w // 6)], fill=(60, 60, 60))
    return grid


def plot_loss_curve(losses: Sequence[float], path: str | os.PathLike, title: str = "train loss") -> Path:
    """The loss per step and its moving average as a 640 x 360 PNG (PIL only), written atomically."""
    w, h = 640, 360
    left, right, top, bottom = 60, 15, 25, 35
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((left, 6), title, fill=(0, 0, 0))
    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    vals = [float(v) for v in losses if math.isfinite(v)]
    if not vals:
        d.text((left + 10, top + 10), "no steps", fill=(0, 0, 0))
        return save_png(img, path)
    lo, hi, n = min(vals), max(vals), len(losses)
    hi = hi if hi > lo else lo + 1e-8

    def xy(i: int, v: float) -> tuple[float, float]:
        return (left + (w - right - left) * (i / max(1, n - 1)),
                (h - bottom) - (h - bottom - top) * ((v - lo) / (hi - lo)))

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
    return save_png(img, path)
