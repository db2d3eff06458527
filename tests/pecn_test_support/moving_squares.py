"""Synthetic moving-square videos and their frame cache: the PAC-Net tests' data (and their
learnability check), the stand-in tests' videos."""

from __future__ import annotations

from typing import Optional

import numpy as np

from pecn_ml.training.pacnet_data import ArrayFrameCache


def moving_square_video(num_frames: int, size: int = 32, square: Optional[int] = None,
                        rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """(T, size, size, 3) uint8: a square (side `square`, default size // 4) moving left -> right
    over a noisy colour gradient (so its position changes what a pooled CNN sees)."""
    rng = np.random.default_rng(0) if rng is None else rng
    square = max(size // 4, 1) if square is None else square
    assert 1 <= square <= size, (square, size)
    xs = np.linspace(0.0, 1.0, size, dtype=np.float32)
    bg = np.empty((size, size, 3), np.float32)
    bg[..., 0] = 40 + 180 * xs[None, :]
    bg[..., 1] = 60 + 40 * rng.random()
    bg[..., 2] = 220 - 180 * xs[None, :]
    y0 = int(rng.integers(0, size - square + 1))
    colour = np.array([255, 255, 255], np.float32) * (0.8 + 0.2 * rng.random())
    video = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        x0 = int(round(t / max(num_frames - 1, 1) * (size - square)))
        f = bg + rng.normal(0, 4, bg.shape).astype(np.float32)
        f[y0:y0 + square, x0:x0 + square] = colour
        video[t] = np.clip(f, 0, 255).astype(np.uint8)
    return video


def moving_square_dataset(n_videos: int, size: int = 32, min_len: int = 24, max_len: int = 48,
                          seed: int = 0, prefix: str = "sq", task: str = "move_object"
                          ) -> tuple[ArrayFrameCache, list[dict]]:
    """A cache of `n_videos` moving-square videos and matching annotation entries."""
    rng = np.random.default_rng(seed)
    videos, entries = {}, []
    for i in range(n_videos):
        vid = f"{prefix}{i}"
        videos[vid] = moving_square_video(int(rng.integers(min_len, max_len + 1)), size, rng=rng)
        entries.append({"id": vid, "label": "pushing something from left to right",
                        "template": "Pushing [something] from left to right",
                        "placeholders": ["something"], "task": task})
    return ArrayFrameCache(videos), entries
