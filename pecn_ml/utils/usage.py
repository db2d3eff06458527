"""What a step cost: peak memory (this process, or a command run with its log), seconds, bytes on disk."""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

# --- memory ------------------------------------------------------------------------------------

def _rss_bytes(maxrss: int) -> int:
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)  # Linux reports KiB


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
    return PeakRss(*(_rss_bytes(resource.getrusage(who).ru_maxrss)
                     for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def run_logged(command: Sequence[str], log_path: Path) -> tuple[int, float, int]:
    """Run `command` with its output in `log_path`: (exit code, wall seconds, peak RSS in bytes of it
    and the descendants it waited for, from wait4); the child is killed if waiting is interrupted."""
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - t0, _rss_bytes(usage.ru_maxrss)


def log_tail(path: Path, n: int = 40) -> str:
    """The last `n` lines of the log at `path` ("" when there is none)."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def cuda_peak_memory_bytes() -> Optional[int]:
    """Peak memory allocated by torch on the current CUDA device since the last reset; None when
    CUDA is not in use in this process (never initialises CUDA itself)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return int(torch.cuda.max_memory_allocated())


def usage_metadata() -> dict:
    """Peak memory as step metadata: `peak_rss_bytes`, `peak_rss_children_bytes` and, on CUDA,
    `cuda_peak_bytes`."""
    rss = peak_rss()
    meta = {"peak_rss_bytes": rss.self_bytes, "peak_rss_children_bytes": rss.children_bytes}
    cuda = cuda_peak_memory_bytes()
    if cuda is not None:
        meta["cuda_peak_bytes"] = cuda
    return meta


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
