"""(input frame, target frame, prompt) pairs for InstructPix2Pix, read from the frame cache.

Items are {"video_id", "input": (3, R, R) float in [-1, 1], "target": same, "prompt": str} (the
seed's 2 * (x / 255) - 1, no augmentation). The cache needs `num_frames(id)` (LookupError or
FileNotFoundError when unknown), `frame(id, idx)` and `resolution`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from pecn_ml.prompts import PROMPT_TEXTS, action_text, build_prompt, progress_percent, shuffle_percents

SKIP_REASONS = ("duplicate", "not_cached", "too_short", "no_progress_estimate")


def frame_to_tensor(frame: np.ndarray) -> torch.Tensor:
    """(R, R, 3) uint8 -> (3, R, R) float32 in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frame))  # (R, R, 3) uint8
    return t.permute(2, 0, 1).float().div_(127.5).sub_(1.0)  # (3, R, R)


def load_annotation_entries(annotations: Sequence[Mapping[str, Any]] | str | Path
                            ) -> tuple[list[Mapping[str, Any]], str]:
    """The entries and a name for error messages (the file, or "annotations")."""
    if isinstance(annotations, (str, Path)):
        path = Path(annotations)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read annotations: {e}") from e
        source = str(path)
    else:
        entries, source = annotations, "annotations"
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"{source}: expected a list of annotation entries, "
                         f"got {type(entries).__name__}")
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise ValueError(f"{source}: entry {i} is not an object: {e!r}")
        for key in ("id", "label"):
            if not isinstance(e.get(key), str) or not e[key]:
                raise ValueError(f"{source}: entry {i} has no string {key!r}: {dict(e)!r}")
    return list(entries), source


class FramePairDataset(Dataset):
    """Frame pairs `(input_idx, target_idx)` of the annotated videos found in the frame cache.

    Videos absent from the cache, too short, repeated, or without a `progress_estimates` entry are
    listed in `.skipped[reason]`. Progress prompts use the frame count (`progress_percent`) or the
    estimates; with `shuffle_seed` (control arms) the dataset's percents are deranged among its
    videos. `.percents` holds the number in each prompt, `.true_percents` the video's own."""

    def __init__(self, cache: Any, annotations: Sequence[Mapping[str, Any]] | str | Path, *,
                 input_idx: int = 20, target_idx: int = 21, add_progress: bool = False,
                 progress_estimates: Optional[Mapping[str, float]] = None,
                 prompt_text: str = "class", shuffle_seed: Optional[int] = None):
        if not 0 <= input_idx < target_idx:
            raise ValueError(f"FramePairDataset: need 0 <= input_idx < target_idx, "
                             f"got {input_idx}, {target_idx}")
        if prompt_text not in PROMPT_TEXTS:
            raise ValueError(f"FramePairDataset: prompt_text must be one of {PROMPT_TEXTS}, "
                             f"got {prompt_text!r}")
        if progress_estimates is not None and not add_progress:
            raise ValueError("FramePairDataset: progress_estimates given but add_progress=False")
        if shuffle_seed is not None and not add_progress:
            raise ValueError("FramePairDataset: shuffle_seed given but add_progress=False")
        entries, self.source = load_annotation_entries(annotations)
        self.cache = cache
        self.resolution = int(cache.resolution)
        self.input_idx, self.target_idx = input_idx, target_idx
        self.add_progress = add_progress
        self.prompt_text = prompt_text
        self.progress_from = ("none" if not add_progress
                              else "estimates" if progress_estimates is not None else "frame_count")
        self.shuffle_seed = shuffle_seed
        texts = self._collect(entries, progress_estimates)
        self.percents = (shuffle_percents(self.true_percents, shuffle_seed) if shuffle_seed is not None
                         else list(self.true_percents))
        self.prompts = [build_prompt(t, pct) for t, pct in zip(texts, self.percents)]

    def _collect(self, entries: Sequence[Mapping[str, Any]],
                 progress_estimates: Optional[Mapping[str, float]]) -> list[str]:
        """Fill the per-video lists and `.skipped`; return the action texts."""
        self.skipped: dict[str, list[str]] = {r: [] for r in SKIP_REASONS}
        self.video_ids: list[str] = []
        self.labels: list[str] = []
        self.num_frames: list[int] = []
        self.true_percents: list[Optional[float]] = []
        texts: list[str] = []
        seen: set[str] = set()
        for e in entries:
            vid = e["id"]
            if vid in seen:
                self.skipped["duplicate"].append(vid)
                continue
            seen.add(vid)
            try:
                n = int(self.cache.num_frames(vid))
            except (LookupError, FileNotFoundError):
                self.skipped["not_cached"].append(vid)
                continue
            if n <= self.target_idx:
                self.skipped["too_short"].append(vid)
                continue
            if progress_estimates is not None and vid not in progress_estimates:
                self.skipped["no_progress_estimate"].append(vid)
                continue
            pct: Optional[float] = (progress_estimates[vid] if progress_estimates is not None
                                    else progress_percent(self.input_idx, n) if self.add_progress else None)
            self.video_ids.append(vid)
            self.labels.append(e["label"])
            self.num_frames.append(n)
            self.true_percents.append(pct)
            texts.append(action_text(e, self.prompt_text))
        return texts

    @classmethod
    def for_variant(cls, cache: Any, annotations: Sequence[Mapping[str, Any]] | str | Path,
                    variant: Any, progress_estimates: Optional[Mapping[str, float]] = None,
                    prompt_text: str = "class") -> "FramePairDataset":
        """The pairs of a `pecn_ml.variants.Variant` (its frames and whether prompts carry progress,
        true or shuffled)."""
        return cls(cache, annotations, input_idx=variant.input_idx, target_idx=variant.target_idx,
                   add_progress=variant.add_progress,
                   progress_estimates=progress_estimates if variant.add_progress else None,
                   prompt_text=prompt_text, shuffle_seed=variant.shuffle_seed)

    def __len__(self) -> int:
        return len(self.video_ids)

    def summary(self) -> dict[str, Any]:
        """Counts for logs and asset metadata."""
        return {"pairs": len(self), "skipped": {k: len(v) for k, v in self.skipped.items()},
                "input_idx": self.input_idx, "target_idx": self.target_idx,
                "resolution": self.resolution, "progress_from": self.progress_from,
                "progress_shuffle_seed": self.shuffle_seed, "prompt_text": self.prompt_text}

    def frame(self, vid: str, idx: int) -> np.ndarray:
        """Frame `idx` of video `vid` from the cache, checked to be (R, R, 3) uint8."""
        frame = self.cache.frame(vid, idx)
        r = self.resolution
        if frame.shape != (r, r, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame cache: frame {idx} of video {vid} is {frame.dtype} "
                             f"{tuple(frame.shape)}, expected uint8 ({r}, {r}, 3)")
        return frame

    def frames_uint8(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (R, R, 3) uint8 input and target frames of pair `i`."""
        vid = self.video_ids[i]
        return self.frame(vid, self.input_idx), self.frame(vid, self.target_idx)

    def __getitem__(self, i: int) -> dict[str, Any]:
        inp, tgt = self.frames_uint8(i)
        return {"video_id": self.video_ids[i], "input": frame_to_tensor(inp),
                "target": frame_to_tensor(tgt), "prompt": self.prompts[i]}


def collate_pairs(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack items into ``{"video_id": [B], "input": (B, 3, R, R), "target": ..., "prompt": [B]}``."""
    return default_collate(list(items))
