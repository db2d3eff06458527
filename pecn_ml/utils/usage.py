"""What a step cost: peak memory, seconds per step, bytes on disk; and pruning of training state
that a finished training no longer needs.

Layouts pruned by `prune_training_state` (see `pecn_ml.training.pix2pix_checkpoints` and
`pecn_ml.training.pacnet`):

- InstructPix2Pix: `checkpoints/checkpoint-{step}/` (UNet + accelerate's optimizer, scheduler,
  scaler and RNG states) beside the final `model/` pipeline;
- PAC-Net: `last/` (model files + optimizer.safetensors/json, rng.safetensors, train_state.json)
  beside `best/`.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

LogFn = Callable[[str], None]

# PAC-Net `last/` files that only a resume needs; the model files and train_state.json stay.
PACNET_RESUME_FILES = ("optimizer.safetensors", "optimizer.json", "rng.safetensors")


# --- memory ------------------------------------------------------------------------------------

def _maxrss_bytes(who: int) -> int:
    rss = resource.getrusage(who).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


@dataclass(frozen=True)
class PeakRss:
    """Peak resident memory in bytes: of this process, and of the largest child it has waited
    for (getrusage's RUSAGE_CHILDREN: finished children only, the largest one, not a sum)."""

    self_bytes: int
    children_bytes: int

    @property
    def max_bytes(self) -> int:
        return max(self.self_bytes, self.children_bytes)


def peak_rss() -> PeakRss:
    """Peak RSS so far of this process and of its finished children (`resource.getrusage`)."""
    return PeakRss(_maxrss_bytes(resource.RUSAGE_SELF), _maxrss_bytes(resource.RUSAGE_CHILDREN))


def cuda_peak_memory_bytes() -> Optional[int]:
    """Peak memory allocated by torch on the current CUDA device since the last reset; None when
    CUDA is not in use in this process (never initialises CUDA itself)."""
    try:
        import torch
    except ImportError:
        return None
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return int(torch.cuda.max_memory_allocated())


def reset_cuda_peak() -> None:
    """Start a new CUDA peak (no-op off CUDA)."""
    if cuda_peak_memory_bytes() is not None:
        import torch

        torch.cuda.reset_peak_memory_stats()


def usage_metadata() -> dict:
    """Peak memory as step metadata: `peak_rss_bytes`, `peak_rss_children_bytes` and, on CUDA,
    `cuda_peak_bytes`."""
    rss = peak_rss()
    meta = {"peak_rss_bytes": rss.self_bytes, "peak_rss_children_bytes": rss.children_bytes}
    cuda = cuda_peak_memory_bytes()
    if cuda is not None:
        meta["cuda_peak_bytes"] = cuda
    return meta


# --- time --------------------------------------------------------------------------------------

class StepTimer:
    """Seconds per step: wrap each step in `with timer.step():`. The first `warmup` steps
    (allocation, kernel selection) are timed but left out of `seconds_per_step`."""

    def __init__(self, warmup: int = 0, clock: Callable[[], float] = time.perf_counter):
        self.warmup, self.clock = warmup, clock
        self.times: list[float] = []

    @contextmanager
    def step(self) -> Iterator[None]:
        t0 = self.clock()
        try:
            yield
        finally:
            self.times.append(self.clock() - t0)

    @property
    def steps(self) -> int:
        return len(self.times)

    @property
    def seconds_per_step(self) -> float:
        """Mean over the steps after the warm-up ones (all of them when there are no others);
        NaN before the first step."""
        timed = self.times[self.warmup:] or self.times
        return sum(timed) / len(timed) if timed else float("nan")

    @property
    def total_s(self) -> float:
        return sum(self.times)


# --- disk --------------------------------------------------------------------------------------

def bytes_on_disk(path: str | os.PathLike, follow_symlinks: bool = False) -> int:
    """Size of a file, or of every file under a folder (like `du -sb`: apparent sizes, a
    hard-linked file once, symlinks not followed unless `follow_symlinks`: a Hugging Face cache
    snapshot is symlinks to its blobs). FileNotFoundError when `path` is missing."""
    path = Path(path)
    stat = os.stat if follow_symlinks else os.lstat
    st = stat(path)
    if not path.is_dir() or (path.is_symlink() and not follow_symlinks):
        return st.st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files:
            try:
                s = stat(os.path.join(root, name))
            except FileNotFoundError:  # removed while we walked
                continue
            if (s.st_dev, s.st_ino) in seen:
                continue
            seen.add((s.st_dev, s.st_ino))
            total += s.st_size
    return total


def safetensors_parameters(*paths: str | os.PathLike) -> int:
    """Number of values (parameters and buffers) stored in safetensors files or in every
    `*.safetensors` under folders, read from the files' headers (no weights are loaded)."""
    from safetensors import safe_open

    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.rglob("*.safetensors")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no safetensors file in {[str(p) for p in paths]}")
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total


# --- pruning -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pruned:
    """What `prune_training_state` removed, and the bytes that freed."""

    removed: tuple[Path, ...]
    freed_bytes: int
    kept_reason: str = ""  # why nothing (or not everything) was removed

    def metadata(self) -> dict:
        return {"pruned_paths": [str(p) for p in self.removed], "pruned_bytes": self.freed_bytes}


def _newest_mtime(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=-1.0)


def _pix2pix_removable(out: Path) -> tuple[list[Path], str]:
    """Checkpoints older than the final pipeline in `model/` (a newer one is of a later, still
    unfinished run and stays)."""
    from pecn_ml.training.pix2pix_checkpoints import STATE_FILE, checkpoints_dir, list_checkpoints

    root = checkpoints_dir(out)
    if not root.is_dir():
        return [], ""
    from pecn_ml.models.pix2pix import BASE_REF

    model = out / "model"
    index = model / BASE_REF if (model / BASE_REF).is_file() else model / "model_index.json"   # light or full
    finals = [index, *sorted((model / "unet").glob("*.safetensors"))]
    if not all(p.is_file() for p in finals[:2]):
        return [], f"{model}: no final pipeline; checkpoints kept (training not finished)"
    final_at = _newest_mtime(finals)
    found = [p for _, p in list_checkpoints(out)]
    remove = [p for p in found if (p / STATE_FILE).stat().st_mtime <= final_at]
    newer = len(found) - len(remove)
    return remove, (f"{newer} checkpoint(s) newer than {model} kept" if newer else "")


def _pacnet_removable(out: Path, keep_final: bool) -> tuple[list[Path], str]:
    """PAC-Net's resume state of a finished run (last epoch == configured epochs)."""
    last = out / "last"
    state_file = last / "train_state.json"
    if not state_file.is_file():
        return [], ""
    if not (out / "best").is_dir():
        return [], f"{out / 'best'} missing; {last} kept"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    epochs = state.get("train_config", {}).get("epochs")
    if epochs is None or int(state.get("epoch", -1)) < int(epochs):
        return [], f"{last}: training not finished (epoch {state.get('epoch')}/{epochs}); kept"
    extra = [out / ".last.old"] if (out / ".last.old").exists() else []
    if keep_final:
        return [last / name for name in PACNET_RESUME_FILES if (last / name).exists()] + extra, ""
    return [last] + extra, ""


def prune_training_state(out_dir: str | os.PathLike, keep_final: bool = True,
                         log: Optional[LogFn] = None) -> Pruned:
    """Delete the optimizer-state checkpoints of a finished training in `out_dir` (call it after
    the trainer returned, i.e. after its final `save_pretrained`).

    Never deletes the final model (`model/`), `best/`, validation grids, logs or latent caches.
    InstructPix2Pix: every `checkpoints/checkpoint-N/` older than the final pipeline (a
    checkpoint is useless without its optimizer state, so it goes whole). PAC-Net, when `last/`
    records the configured number of epochs: `keep_final=True` removes only the optimizer and
    RNG files from `last/` and keeps its model and train_state.json, so the trainer still
    recognises the run as finished and a re-materialisation returns at once;
    `keep_final=False` removes `last/` entirely (a later run then trains again from scratch).
    A training that is not finished is left alone (`kept_reason` says why).
    """
    out = Path(out_dir)
    p2p, why_p2p = _pix2pix_removable(out)
    pac, why_pac = _pacnet_removable(out, keep_final)
    removed, freed = [], 0
    for p in p2p + pac:
        size = bytes_on_disk(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p)
        freed += size
    why = "; ".join(w for w in (why_p2p, why_pac) if w)
    if log is not None and (removed or why):
        log(f"pruned {len(removed)} training-state path(s) under {out}, {freed / 2**20:.1f} MiB"
            + (f" ({why})" if why else ""))
    return Pruned(tuple(removed), freed, why)
