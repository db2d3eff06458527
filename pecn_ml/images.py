"""Image helpers for evaluation outputs: atomic PNG I/O, labelled comparison grids, data URIs."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Sequence, Union

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


def png_data_uri(image: str | os.PathLike | ImageLike, max_px: int = 256) -> str:
    """`data:image/png;base64,...` of an image file or image, shrunk so its longer side is at most
    `max_px` (aspect kept, never enlarged): small enough to embed in Markdown metadata."""
    if max_px < 1:
        raise ValueError(f"max_px must be >= 1, got {max_px}")
    if isinstance(image, (str, os.PathLike)):
        pil = Image.fromarray(load_png(image))
    elif isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        pil = Image.fromarray(as_rgb_array(image))
    if max(pil.size) > max_px:
        pil = pil.copy()
        pil.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
