"""PAC-Net data: dynamic temporal cropping over a frame cache, the selection split, and an in-memory
cache. A frame cache has `num_frames(id)`, `frame(id, idx) -> (R, R, 3) uint8` and
optionally `frames(id, indices)`; entries are dicts with "id" and "label". Crop ratios are keyed by
(seed, epoch, video id), so a crop depends on no list order, worker, rank or interruption.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pecn_ml.models.pacnet import uniform_indices


def crop_indices(total_frames: int, ratio: float, num_frames: int) -> tuple[np.ndarray, float]:
    """Frames 0..end (end = floor(ratio * total_frames)) sampled to `num_frames`: (indices
    (num_frames,) int64, non-decreasing, ending at `end`; target = end / total_frames)."""
    if total_frames < 1:
        raise ValueError(f"crop_indices: total_frames must be >= 1, got {total_frames}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"crop_indices: ratio must be in [0, 1), got {ratio}")
    if num_frames < 1:
        raise ValueError(f"crop_indices: num_frames must be >= 1, got {num_frames}")
    end = min(int(math.floor(ratio * total_frames)), total_frames - 1)
    return uniform_indices(end, num_frames), end / total_frames


def video_key(video_id: str) -> int:
    """A stable 32-bit integer for a video id (seeds its crops)."""
    return int.from_bytes(hashlib.sha256(str(video_id).encode("utf-8")).digest()[:4], "little")


def crop_ratio(seed: int, epoch: Optional[int], video_id: str, low: float, high: float) -> float:
    """r ~ U(low, high) from a generator keyed by (seed, epoch, video); epoch None = validation."""
    key = [int(seed), video_key(video_id)] if epoch is None else [int(seed), int(epoch), video_key(video_id)]
    return float(np.random.default_rng(key).uniform(low, high))


def epoch_permutation(seed: int, epoch: int, n: int) -> list[int]:
    """The training order of `epoch`, a pure function of (seed, epoch, n) (the order an earlier
    shuffling DataLoader gave: one int64 drawn, then `randperm`)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g).tolist()


def load_frames(cache: Any, video_id: str, indices: Sequence[int]) -> np.ndarray:
    """(N, H, W, 3) uint8 for `indices` (each distinct frame read once)."""
    indices = np.asarray(indices, dtype=np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)
    if hasattr(cache, "frames"):
        arr = np.asarray(cache.frames(video_id, [int(i) for i in unique]))
    else:
        arr = np.stack([np.asarray(cache.frame(video_id, int(i))) for i in unique])
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) != len(unique):
        raise ValueError(f"frame cache: video {video_id!r} frames {unique.tolist()} gave "
                         f"{arr.dtype} {arr.shape}, expected uint8 ({len(unique)}, H, W, 3)")
    return arr[inverse]


def check_entries(entries: Sequence[Mapping], what: str) -> list[dict]:
    """Entries as dicts with a string "id" and a non-empty string "label"; clear errors otherwise."""
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping) or "id" not in e or "label" not in e:
            raise ValueError(f"{what}: entry #{i} must be a dict with 'id' and 'label', got {e!r:.200}")
        if not isinstance(e["label"], str) or not e["label"].strip():
            raise ValueError(f"{what}: entry #{i} (id={e['id']!r}) has an empty or non-string label")
        out.append(dict(e, id=str(e["id"])))
    return out


class SplitOverlap(ValueError):
    """Two splits that must be disjoint (training, selection, evaluation videos) share video ids."""


def check_disjoint(splits: Mapping[str, Sequence[Mapping]]) -> None:
    """Raise `SplitOverlap` naming the splits and (up to 5 of) the ids when any two of `splits`
    ({name: entries}) share a video id."""
    ids = {name: {str(e["id"]) for e in entries} for name, entries in splits.items()}
    for a, b in itertools.combinations(ids, 2):
        shared = sorted(ids[a] & ids[b])
        if shared:
            raise SplitOverlap(f"PAC-Net splits overlap: {len(shared)} video(s) are in both {a} and {b} "
                               f"(e.g. {shared[:5]}); the model would be chosen or scored on videos it "
                               f"trained or was chosen on")


def selection_counts(task_sizes: Mapping[str, int], fraction: float) -> dict[str, int]:
    """Videos per task for the selection split: round(fraction x n), at least 1 where a task has 2
    or more videos (one stays for training), 0 for a task of one."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"selection fraction must be in (0, 1), got {fraction}")
    return {task: (min(max(1, round(fraction * n)), n - 1) if n >= 2 else 0)
            for task, n in sorted(task_sizes.items())}


def carve_selection_split(train_entries: Sequence[Mapping], fraction: float, seed: int,
                          exclude: Sequence[Mapping] = ()) -> tuple[list[dict], list[dict]]:
    """(training entries left, selection entries), in input order: per task a seeded draw of
    `selection_counts` videos (depends on the ids and seed, not their order); `SplitOverlap` when
    the result shares an id with `exclude` (the evaluation videos)."""
    entries = check_entries(train_entries, "train_entries")
    by_task: dict[str, list[str]] = {}
    for e in entries:
        by_task.setdefault(str(e.get("task") or ""), []).append(e["id"])
    chosen: set[str] = set()
    for task, k in selection_counts({t: len(v) for t, v in by_task.items()}, fraction).items():
        ids = sorted(set(by_task[task]))
        rng = np.random.default_rng([int(seed), video_key(task)])
        chosen.update(ids[i] for i in rng.choice(len(ids), size=min(k, len(ids)), replace=False))
    train = [e for e in entries if e["id"] not in chosen]
    selection = [e for e in entries if e["id"] in chosen]
    check_disjoint({"training": train, "selection": selection,
                    "evaluation": check_entries(exclude, "evaluation entries")})
    return train, selection


class PacNetCropDataset(Dataset):
    """One temporally cropped clip per entry: {"frames" uint8 (N, H, W, 3), "text", "target" float32,
    "video_id"}; a fresh ratio per video and epoch (`set_epoch`), or one per video (`fixed`)."""

    def __init__(self, cache: Any, entries: Sequence[Mapping], num_frames: int,
                 min_ratio: float = 0.1, max_ratio: float = 0.9, seed: int = 0,
                 fixed: bool = False, what: str = "entries"):
        if not 0.0 <= min_ratio <= max_ratio < 1.0:
            raise ValueError(f"{what}: need 0 <= min_ratio <= max_ratio < 1, "
                             f"got {min_ratio}, {max_ratio}")
        self.cache, self.entries = cache, check_entries(entries, what)
        self.num_frames, self.min_ratio, self.max_ratio = num_frames, min_ratio, max_ratio
        self.seed, self.fixed, self.epoch = seed, fixed, 0
        self.totals = []
        for e in self.entries:
            n = int(cache.num_frames(e["id"]))
            if n < 1:
                raise ValueError(f"{what}: video {e['id']!r} has {n} frames in the frame cache")
            self.totals.append(n)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def ratio(self, i: int, epoch: Optional[int] = None) -> float:
        ep = None if self.fixed else (self.epoch if epoch is None else epoch)
        return crop_ratio(self.seed, ep, self.entries[i]["id"], self.min_ratio, self.max_ratio)

    def crop(self, i: int, epoch: Optional[int] = None) -> tuple[np.ndarray, float]:
        return crop_indices(self.totals[i], self.ratio(i, epoch), self.num_frames)

    def targets(self, epoch: Optional[int] = None) -> np.ndarray:
        """All targets of one epoch (or the fixed crops), without reading any frame."""
        return np.array([self.crop(i, epoch)[1] for i in range(len(self))], dtype=np.float64)

    def __getitem__(self, i: int) -> dict:
        entry = self.entries[i]
        idx, target = self.crop(i)
        frames = load_frames(self.cache, entry["id"], idx)
        return {"frames": torch.from_numpy(np.ascontiguousarray(frames)),
                "text": entry["label"], "target": torch.tensor(target, dtype=torch.float32),
                "video_id": entry["id"]}


# --- in-memory cache (tests, the GPU check) -------------------------------------------------

class ArrayFrameCache:
    """Frame cache over in-memory arrays {video_id: (T, H, W, 3) uint8}; `version` names the data."""

    def __init__(self, videos: Mapping[str, np.ndarray], version: str = "in-memory"):
        self.videos = {str(k): np.asarray(v) for k, v in videos.items()}
        self.version = version
        for k, v in self.videos.items():
            if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
                raise ValueError(f"ArrayFrameCache: video {k!r} is {v.dtype} {v.shape}, "
                                 f"expected uint8 (T, H, W, 3)")

    @property
    def resolution(self) -> int:
        sizes = {v.shape[1:3] for v in self.videos.values()}
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            raise ValueError(f"ArrayFrameCache: frames are not square of one size: {sorted(sizes)}")
        return int(next(iter(sizes))[0])

    def _video(self, video_id: str) -> np.ndarray:
        try:
            return self.videos[str(video_id)]
        except KeyError:
            raise KeyError(f"ArrayFrameCache: unknown video {video_id!r}") from None

    def num_frames(self, video_id: str) -> int:
        return len(self._video(video_id))

    def frame(self, video_id: str, idx: int) -> np.ndarray:
        v = self._video(video_id)
        if not 0 <= idx < len(v):
            raise IndexError(f"ArrayFrameCache: video {video_id!r} has {len(v)} frames, asked {idx}")
        return v[idx]

    def frames(self, video_id: str, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.frame(video_id, int(i)) for i in indices])
