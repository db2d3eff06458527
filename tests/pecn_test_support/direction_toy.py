"""A toy world where only the prompt says which way an object moves (the direction learnability test).

A frame is a flat background with one bright square; the pair's target is its input with the
square moved `shift` px left or right, and the prompt is "move left" or "move right". Every input
position is drawn so that both moves stay inside the frame, so the input alone cannot tell the
direction. `DirectionPairs` serves the pairs to `train_pix2pix` under the contract it reads from
`FramePairDataset` (ids, prompts, an in-memory frame cache, items); `centroid_x` finds the square in
a sampled frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from pecn_ml.data.pairs import frame_to_tensor

BACKGROUND = np.array([20, 30, 40], np.uint8)
SQUARE = np.array([240, 220, 60], np.uint8)
DIRECTIONS = {"left": -1, "right": +1}


def direction_prompt(direction: str) -> str:
    """The instruction of a pair: the direction word is the only difference between the two."""
    assert direction in DIRECTIONS, direction
    return f"move {direction}"


@dataclass(frozen=True)
class DirectionToy:
    """The world's geometry (pixels)."""

    resolution: int = 32
    size: int = 8          # the square's side
    shift: int = 10        # how far it moves

    def __post_init__(self) -> None:
        assert self.resolution - self.size - 2 * self.shift >= 0, "no room for both moves"

    def frame(self, x: int, y: int) -> np.ndarray:
        """(R, R, 3) uint8: the square's top-left corner at (x, y)."""
        f = np.empty((self.resolution, self.resolution, 3), np.uint8)
        f[:] = BACKGROUND
        f[y:y + self.size, x:x + self.size] = SQUARE
        return f

    def inputs(self, n: int, seed: int) -> list[tuple[int, int]]:
        """n (x, y) square positions from which both moves stay inside the frame."""
        rng = np.random.default_rng(seed)
        xs = rng.integers(self.shift, self.resolution - self.size - self.shift + 1, n)
        ys = rng.integers(0, self.resolution - self.size + 1, n)
        return [(int(x), int(y)) for x, y in zip(xs, ys)]

    def pairs(self, n: int, seed: int) -> "DirectionPairs":
        """n training pairs, alternately "left" and "right", at random positions."""
        frames, prompts = [], []
        for i, (x, y) in enumerate(self.inputs(n, seed)):
            direction = ("left", "right")[i % 2]
            frames.append((self.frame(x, y), self.frame(x + DIRECTIONS[direction] * self.shift, y)))
            prompts.append(direction_prompt(direction))
        return DirectionPairs(frames, prompts, self.resolution)

    def centroid_x(self, frame: np.ndarray) -> float:
        """x of the centre of the pixels brighter than halfway from background to square (NaN
        when there are none: the object vanished)."""
        grey = frame.astype(np.float32).mean(axis=-1)                     # (R, R)
        lo, hi = float(BACKGROUND.mean()), float(SQUARE.mean())
        mask = grey > (lo + hi) / 2
        if not mask.any():
            return float("nan")
        return float(np.nonzero(mask)[1].mean())


class _MemoryFrameCache:
    """The frame-cache contract (`resolution`, `version`, `num_frames`, `frame`) over arrays."""

    def __init__(self, videos: dict[str, tuple[np.ndarray, np.ndarray]], resolution: int):
        self.videos, self.resolution = videos, resolution
        self.version = f"direction-toy-{len(videos)}-{resolution}"

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.videos

    def num_frames(self, video_id: str) -> int:
        return len(self.videos[video_id])

    def frame(self, video_id: str, idx: int) -> np.ndarray:
        return self.videos[video_id][idx]


class DirectionPairs:
    """(input, target, prompt) pairs with `FramePairDataset`'s interface (input frame 0, target 1)."""

    input_idx, target_idx = 0, 1

    def __init__(self, frames: list[tuple[np.ndarray, np.ndarray]], prompts: list[str], resolution: int):
        assert len(frames) == len(prompts) > 0
        self.video_ids = [f"toy{i:04d}" for i in range(len(frames))]
        self.prompts = list(prompts)
        self.resolution = resolution
        self.cache = _MemoryFrameCache(dict(zip(self.video_ids, frames)), resolution)

    def __len__(self) -> int:
        return len(self.video_ids)

    def frame(self, vid: str, idx: int) -> np.ndarray:
        return self.cache.frame(vid, idx)

    def frames_uint8(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.cache.videos[self.video_ids[i]]

    def __getitem__(self, i: int) -> dict[str, Any]:
        inp, tgt = self.frames_uint8(i)
        return {"video_id": self.video_ids[i], "input": frame_to_tensor(inp),
                "target": frame_to_tensor(tgt), "prompt": self.prompts[i]}

    def all_frames(self, limit: Optional[int] = None) -> np.ndarray:
        """(2N, R, R, 3) uint8: every input and target frame (the VAE's training set)."""
        return np.stack([f for pair in list(self.cache.videos.values())[:limit] for f in pair])
