"""Progress estimation with a trained PAC-Net: frames 0..input_idx sampled uniformly to
`config.num_frames` (like the training crops) + action text -> percent; truth = input_idx / num_frames."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from pecn_ml.models.pacnet import PacNet, uniform_indices
from pecn_ml.training.pacnet_data import check_entries, load_frames
from pecn_ml.utils.progress import LogFn, ProgressMeter

logger = logging.getLogger(__name__)


@torch.no_grad()
def _predict_percent(model: PacNet, clips: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """clips uint8 (B, N, H, W, 3), texts (B) -> (B,) percent in [0, 100]."""
    was_training = model.training
    model.eval()
    try:
        frames = model.prepare_frames(torch.from_numpy(np.ascontiguousarray(clips)))  # (B,N,3,S,S)
        ids, mask = model.tokenize(list(texts))
        progress = model.predict_progress(frames, ids, mask)                           # (B,)
    finally:
        model.train(was_training)
    return progress.float().clamp(0.0, 1.0).cpu().numpy().astype(np.float64) * 100.0


def estimate_progress(model: PacNet, frames, text: str) -> float:
    """Percent (0..100) of the action completed after the last of `frames` (uint8 (T, H, W, 3) or a
    list of (H, W, 3), frame 0 first)."""
    arr = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, (list, tuple)) \
        else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise ValueError(f"estimate_progress: frames must be uint8 (T, H, W, 3) with T >= 1, "
                         f"got {arr.dtype} {arr.shape}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("estimate_progress: text must be a non-empty string")
    clip = arr[uniform_indices(len(arr) - 1, model.config.num_frames)]  # (N, H, W, 3)
    return float(_predict_percent(model, clip[None], [text])[0])


def estimate_for_entries(model: PacNet, cache: Any, entries: Sequence[Mapping],
                         input_idx: int = 20, log: Optional[LogFn] = None,
                         batch_size: int = 16) -> list[dict]:
    """Rows {"video_id", "task", "estimate_percent", "truth_percent"} at frame `input_idx` of each
    entry's video; videos with <= input_idx frames are skipped, with a log line."""
    if input_idx < 0:
        raise ValueError(f"estimate_for_entries: input_idx must be >= 0, got {input_idx}")
    entries = check_entries(entries, "estimate_for_entries entries")
    todo, skipped = [], []
    for e in entries:
        n = int(cache.num_frames(e["id"]))
        (todo if n > input_idx else skipped).append((e, n))
    if skipped:
        msg = (f"progress estimation: skipped {len(skipped)} of {len(entries)} videos with "
               f"<= {input_idx} frames (e.g. {[e['id'] for e, _ in skipped[:5]]})")
        (log or logger.warning)(msg)
    indices = uniform_indices(input_idx, model.config.num_frames)
    meter = ProgressMeter("progress estimation", total=len(todo), log=log, unit="videos")
    rows: list[dict] = []
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        clips = np.stack([load_frames(cache, e["id"], indices) for e, _ in chunk])
        percents = _predict_percent(model, clips, [e["label"] for e, _ in chunk])
        for (e, n), pct in zip(chunk, percents):
            rows.append({"video_id": e["id"], "task": e.get("task"),
                         "estimate_percent": float(pct),
                         "truth_percent": input_idx / n * 100.0})
        meter.update(len(chunk))
    return rows


def mae_by_task(rows: Sequence[Mapping]) -> dict[str, dict]:
    """{task: {"n", "mae"}} in percentage points, plus "all" over every row."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        err = abs(float(r["estimate_percent"]) - float(r["truth_percent"]))
        groups[str(r.get("task"))].append(err)
        groups["all"].append(err)
    return {task: {"n": len(errs), "mae": float(np.mean(errs))}
            for task, errs in sorted(groups.items())}
