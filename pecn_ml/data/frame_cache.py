"""Frame cache: every frame of every selected video, decoded once and resized to R x R.

`data_dir/frames_{R}x{R}/` holds `manifest.json` (the source of truth: per video "ok" with
num_frames, bytes, offset and source sha256, or "failed" with a reason; replaced atomically), one
`{id}.npy` per video ((T, R, R, 3) uint8, C order: frame i is one `pread` at offset + i*R*R*3) and
`.lock` (flock held while a build runs; a second build waits). An .npy is trusted only if the
manifest lists it "ok" with the same size; files are written under temp names, fsynced before the
manifest that vouches for them, and anything untrusted is dropped at the start of a build.
"""

from __future__ import annotations

import fcntl
import io
import json
import multiprocessing as mp
import os
import socket
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from pecn_ml.data.annotations import validate_video_id
from pecn_ml.data.video import INTERPOLATION_NAME, VideoDecodeError, decode_into
from pecn_ml.images import save_png
from pecn_ml.utils.files import atomic_path, sha256_file, sha256_json, try_flock, write_json_atomic
from pecn_ml.utils.progress import LogFn, ProgressMeter

FORMAT = "pecn-frame-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
LOCK_TIMEOUT_S = 6 * 3600.0  # how long a second build of one cache waits for the first
NPY_HEADER_BYTES = 128  # .npy 1.0 header of (T, R, R, 3) uint8, padded to 64-byte alignment


def cache_dir(data_dir: str | os.PathLike, resolution: int) -> Path:
    """`data_dir / frames_{R}x{R}`."""
    return Path(data_dir) / f"frames_{int(resolution)}x{int(resolution)}"


def _video_path(data_dir: Path, video_id: str) -> Path:
    return data_dir / "videos" / f"{video_id}.webm"


def _header(resolution: int) -> dict[str, Any]:
    """Everything besides the videos that decides the cache's bytes; a mismatch means rebuild."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "resolution": int(resolution),
            "interpolation": INTERPOLATION_NAME, "layout": "(T, R, R, 3) uint8 .npy per video"}


def manifest_version(manifest: dict[str, Any]) -> str:
    """sha256 over the header and the sorted per-video entries (no paths, no timestamps)."""
    return sha256_json({"header": {k: manifest[k] for k in _header(0)},
                        "videos": sorted(manifest["videos"].items())})


def _read_manifest(root: Path) -> Optional[dict[str, Any]]:
    """The manifest if present and well-formed, else None (the caller decides what that means)."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("videos"), dict):
        return None
    return m


# ----------------------------------------------------------------------------- build


@dataclass(frozen=True)
class CacheBuildReport:
    """What one `build_frame_cache` call did. total = decoded + reused + len(failed)."""
    resolution: int
    total: int                  # distinct ids requested
    decoded: int                # decoded and written by this run
    reused: int                 # already cached from an unchanged source
    failed: dict[str, str]      # {id: reason}, this run's and remembered failures of unchanged sources
    frames_written: int
    bytes: int                  # bytes of .npy written by this run
    seconds: float
    version: str                # sha256 of the manifest entries (= FrameCache.version)
    cache_dir: Path
    cache_bytes: int = 0        # bytes of all .npy listed as ok in the manifest
    cleaned: int = 0            # stale temp / untrusted files deleted at the start



def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def _lock(root: Path, timeout_s: float = LOCK_TIMEOUT_S, log: Optional[LogFn] = None,
          poll_s: float = 0.5) -> Iterator[None]:
    """Exclusive flock on `root/.lock` during a build; a second builder waits up to `timeout_s`."""
    path, t0 = root / LOCK, time.monotonic()
    fd = try_flock(path, 0o644)
    waited = fd is None
    if waited and log:
        log(f"frame cache {root}: waiting for another builder ({_holder(path)}) to finish, "
            f"up to {timeout_s:.0f}s")
    while fd is None:
        if time.monotonic() - t0 >= timeout_s:
            raise TimeoutError(f"another build_frame_cache ({_holder(path)}) still holds {path} after "
                               f"{timeout_s:.0f}s of waiting; if no such build runs any more, its "
                               f"lock went with its process: retry")
        time.sleep(poll_s)
        fd = try_flock(path, 0o644)
    if waited and log:
        log(f"frame cache {root}: the other builder finished after "
            f"{time.monotonic() - t0:.1f}s of waiting; building")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _clean_untrusted(root: Path, videos: dict[str, Any]) -> int:
    """Delete temp files and .npy files the manifest does not vouch for; return how many."""
    trusted = {e["file"] for e in videos.values() if isinstance(e, dict) and e.get("status") == "ok"}
    n = 0
    for p in root.iterdir():
        stale_tmp = p.name.endswith(".tmp")
        untrusted_npy = p.suffix == ".npy" and p.name not in trusted
        if p.is_file() and (stale_tmp or untrusted_npy):
            p.unlink()
            n += 1
    return n


def _entry_problem(vid: str, e: Any, resolution: int) -> Optional[str]:
    """Why a manifest entry is malformed, or None. An ok entry's numbers must add up:
    bytes = offset + num_frames * R * R * 3."""
    try:
        validate_video_id(vid)
    except ValueError as err:
        return f"entry {vid!r}: {err}"
    if not isinstance(e, dict) or e.get("status") not in ("ok", "failed"):
        return f"entry {vid}: not an object with status ok/failed"
    if e["status"] == "failed":
        return None if isinstance(e.get("reason"), str) else f"entry {vid}: failed without a reason"
    fields = ("num_frames", "bytes", "offset")
    if not all(isinstance(e.get(k), int) and e[k] >= 0 for k in fields) or e.get("file") != f"{vid}.npy":
        return f"entry {vid}: needs file={vid}.npy and integer {', '.join(fields)}"
    if e["num_frames"] < 1 or e["bytes"] != e["offset"] + e["num_frames"] * resolution * resolution * 3:
        return f"entry {vid}: bytes {e['bytes']} != offset + num_frames * {resolution}*{resolution}*3"
    return None


def _trusted(root: Path, entry: Optional[dict], sha: Optional[str]) -> bool:
    """An entry (well-formed: `_open_manifest` kept no other) of the same source; if ok, its file
    exists with the recorded size."""
    if not entry or sha is None or entry.get("source_sha256") != sha:
        return False
    if entry["status"] == "failed":
        return True
    p = root / entry["file"]
    return p.is_file() and p.stat().st_size == entry["bytes"]


def _decode_to_npy(src: str, root: str, video_id: str, resolution: int,
                   threads: int) -> tuple[Optional[int], Any]:
    """Decode one video into `{id}.npy` atomically (worker processes): (num_frames, (bytes, offset)),
    or (None, reason) for a video that cannot be decoded."""
    dst = Path(root) / f"{video_id}.npy"
    frame_shape = (resolution, resolution, 3)

    def write(f, frame: np.ndarray) -> None:
        assert frame.shape == frame_shape and frame.dtype == np.uint8, (frame.shape, frame.dtype)
        f.write(memoryview(frame).cast("B"))

    try:
        with atomic_path(dst) as tmp:
            with open(tmp, "wb") as f:  # fsync deferred to the manifest flush (see _fsync_files)
                f.seek(NPY_HEADER_BYTES)  # frames stream in as decoded; the header needs T
                n = decode_into(src, lambda fr: write(f, fr), resolution, threads=threads)
                f.seek(0)
                f.write(_npy_header((n,) + frame_shape))
    except VideoDecodeError as e:  # atomic_path has removed the partial file
        return None, e.problem
    return n, (dst.stat().st_size, NPY_HEADER_BYTES)  # (bytes, data offset)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy (format 1.0) header of a C-order uint8 array, exactly NPY_HEADER_BYTES long."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    header = buf.getvalue()
    assert len(header) == NPY_HEADER_BYTES, f"npy header of {shape} is {len(header)} bytes"
    return header


def _fsync_files(paths: list[Path]) -> None:
    """fsync written files before a manifest vouches for them (in batches: writeback overlaps decoding)."""
    for p in paths:  # a file gone is never trusted anyway: the size check on reuse fails
        with suppress(FileNotFoundError), open(p, "rb") as f:
            os.fsync(f.fileno())
    paths.clear()


class _Build:
    """The manifest being built: records each decode, flushes every `flush_every_s`."""

    def __init__(self, root: Path, manifest: dict[str, Any], meter: ProgressMeter, flush_every_s: float,
                 log: Optional[LogFn]):
        self.root, self.manifest, self.videos = root, manifest, manifest["videos"]
        self.meter, self.flush_every_s, self.log = meter, flush_every_s, log
        self.failed: dict[str, str] = {}
        self.decoded = self.frames = self.bytes = self.reused = 0
        self.unsynced: list[Path] = []
        self.last_flush = time.perf_counter()

    def flush(self) -> None:
        _fsync_files(self.unsynced)
        write_json_atomic(self.root / MANIFEST, self.manifest, indent=None)
        self.last_flush = time.perf_counter()

    def record(self, vid: str, sha: Optional[str], size: Optional[int], n: Optional[int], info: Any) -> None:
        """One video's outcome: (n frames, (bytes, offset)), or n None and the failure reason."""
        if n is None:
            self.videos[vid] = {"status": "failed", "reason": str(info), "source_sha256": sha, "source_size": size}
            self.failed[vid] = str(info)
            if self.log and sha is not None:  # sha None: a missing source, found before decoding
                self.log(f"frame cache: video {vid} failed: {info}")
        else:
            nbytes, offset = info
            self.videos[vid] = {"status": "ok", "file": f"{vid}.npy", "num_frames": n, "bytes": nbytes,
                                "offset": offset, "source_sha256": sha, "source_size": size}
            self.decoded, self.frames, self.bytes = self.decoded + 1, self.frames + n, self.bytes + nbytes
            self.unsynced.append(self.root / f"{vid}.npy")
        self.meter.update()
        if sha is not None and time.perf_counter() - self.last_flush >= self.flush_every_s:
            self.flush()


def _open_manifest(root: Path, resolution: int, log: Optional[LogFn]) -> tuple[dict[str, Any], int]:
    """The manifest to build on (malformed entries forgotten; everything if the header changed), and
    how many untrusted files were deleted."""
    header = _header(resolution)
    old = _read_manifest(root)
    if old is not None and any(old.get(k) != v for k, v in header.items()):
        if log:
            log(f"frame cache {root}: manifest format/resolution/interpolation changed; rebuilding all")
        old = None
    kept = {v: e for v, e in (old["videos"].items() if old else ()) if _entry_problem(v, e, resolution) is None}
    return {**header, "videos": kept}, _clean_untrusted(root, kept)


def _todo(build: _Build, data_dir: Path, ids: list[str]) -> list[tuple[str, Path, str, int]]:
    """The videos to decode; missing sources and trusted entries are recorded as they are."""
    todo = []
    for vid in ids:
        src = _video_path(data_dir, vid)
        if not src.is_file():
            build.record(vid, None, None, None, "source video missing")
            continue
        sha, size = sha256_file(src), src.stat().st_size
        entry = build.videos.get(vid)
        if _trusted(build.root, entry, sha):
            if entry["status"] == "ok":
                build.reused += 1
            else:
                build.failed[vid] = entry["reason"]
            build.meter.update()
            continue
        if entry is not None:  # stale (source changed): forget it and its file
            build.videos.pop(vid)
            (build.root / f"{vid}.npy").unlink(missing_ok=True)
        todo.append((vid, src, sha, size))
    return todo


def build_frame_cache(data_dir: str | os.PathLike, resolution: int, video_ids: Iterable[str], *,
                      log: Optional[LogFn] = None, workers: int = 1, threads: Optional[int] = None,
                      flush_every_s: float = 30.0,
                      lock_timeout_s: float = LOCK_TIMEOUT_S) -> CacheBuildReport:
    """Decode each of `video_ids` (`data_dir/videos/{id}.webm`) once into the R x R cache.

    Incremental (an unchanged source reuses its entry, failures included); a missing or corrupt video
    is recorded as failed, never fatal; entries not requested are kept. `workers` decoding processes
    with `threads` FFmpeg threads each (default: FFmpeg's choice with one worker, else 1). Waits up
    to `lock_timeout_s` for another build of the same cache, then raises TimeoutError."""
    assert isinstance(resolution, int) and resolution > 0, f"resolution must be a positive int: {resolution!r}"
    assert workers >= 1, f"workers must be >= 1, got {workers}"
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    ids = list(dict.fromkeys(validate_video_id(v) for v in video_ids))
    threads = (0 if workers == 1 else 1) if threads is None else threads
    root = cache_dir(data_dir, resolution)
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, lock_timeout_s, log):
        manifest, cleaned = _open_manifest(root, resolution, log)
        meter = ProgressMeter(f"frame cache {resolution}x{resolution}", len(ids), log, unit="videos")
        build = _Build(root, manifest, meter, flush_every_s, log)
        todo = _todo(build, data_dir, ids)
        try:
            if workers == 1:
                for vid, src, sha, size in todo:
                    build.record(vid, sha, size, *_decode_to_npy(str(src), str(root), vid, resolution, threads))
            else:
                _run_pool(todo, root, resolution, threads, workers, build.record)
        finally:  # whatever happened, what was finished is recorded
            build.flush()
    cache_bytes = sum(e["bytes"] for e in manifest["videos"].values() if e.get("status") == "ok")
    report = CacheBuildReport(resolution=resolution, total=len(ids), decoded=build.decoded, reused=build.reused,
                              failed=build.failed, frames_written=build.frames, bytes=build.bytes,
                              seconds=time.perf_counter() - t0, version=manifest_version(manifest),
                              cache_dir=root, cache_bytes=cache_bytes, cleaned=cleaned)
    if log:
        log(f"frame cache {root}: {report.decoded} decoded, {report.reused} reused, "
            f"{len(report.failed)} failed, {report.frames_written} frames in {report.seconds:.1f}s")
    return report


def _run_pool(todo, root: Path, resolution: int, threads: int, workers: int, record) -> None:
    """Decode `todo` in `workers` processes, at most 2 per worker in flight; record in the parent."""
    pending: dict[Future, tuple[str, str, int]] = {}
    queue = list(reversed(todo))
    # forkserver: forking a parent that runs threads (Dagster, FFmpeg) can deadlock a child
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("forkserver")) as pool:
        try:
            while queue or pending:
                while queue and len(pending) < 2 * workers:
                    vid, src, sha, size = queue.pop()
                    fut = pool.submit(_decode_to_npy, str(src), str(root), vid, resolution, threads)
                    pending[fut] = (vid, sha, size)
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    record(*pending.pop(fut), *fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


# ----------------------------------------------------------------------------- read


class FrameCache:
    """Read-only view of a built cache: each read opens the .npy, `pread`s the frames and closes it, so
    it holds no handles and pickles safely into DataLoader workers."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = Path(root)
        self.resolution = int(manifest["resolution"])
        self.version = manifest_version(manifest)
        self._videos: dict[str, dict] = manifest["videos"]
        self._ok = sorted((v for v, e in self._videos.items() if e.get("status") == "ok"), key=int)
        self._frame_bytes = self.resolution * self.resolution * 3

    def __repr__(self) -> str:
        return f"FrameCache({self.root}, {len(self)} videos, version {self.version[:12]})"

    def __len__(self) -> int:
        return len(self._ok)

    def __contains__(self, video_id: object) -> bool:
        return self._videos.get(str(video_id), {}).get("status") == "ok"

    def video_ids(self) -> list[str]:
        """Ids cached successfully, sorted by integer value."""
        return list(self._ok)

    def failures(self) -> dict[str, str]:
        """{id: reason} of videos that could not be cached."""
        return {v: e.get("reason", "?") for v, e in self._videos.items() if e.get("status") == "failed"}

    def _entry(self, video_id: str) -> dict:
        vid = str(video_id)
        e = self._videos.get(vid)
        if e is None:
            raise KeyError(f"video {vid} is not in the frame cache {self.root}")
        if e.get("status") != "ok":
            raise KeyError(f"video {vid} is not in the frame cache {self.root}: it failed to decode "
                           f"({e.get('reason')})")
        return e

    def num_frames(self, video_id: str) -> int:
        """Decoded frame count of `video_id` (KeyError if not cached)."""
        return int(self._entry(video_id)["num_frames"])

    def path(self, video_id: str) -> Path:
        """The video's .npy file: (T, R, R, 3) uint8, loadable with np.load(mmap_mode="r")."""
        return self.root / self._entry(video_id)["file"]

    def _check_index(self, video_id: str, index: Any, n: int) -> int:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index for video {video_id} must be an int, got {index!r}")
        if not 0 <= index < n:
            raise IndexError(f"frame {index} out of range for video {video_id} with {n} frames "
                             f"(valid 0..{n - 1}, 0-based)")
        return int(index)

    def _read(self, video_id: str, runs: list[tuple[int, int]]) -> np.ndarray:
        """Frames [start, start + count) for each run, concatenated: (N, R, R, 3) uint8."""
        e = self._entry(video_id)
        path, fb = self.root / e["file"], self._frame_bytes
        total = sum(c for _, c in runs)
        out = np.empty((total, self.resolution, self.resolution, 3), np.uint8)
        buf = memoryview(out.reshape(-1))
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise OSError(f"frame cache file {path} for video {video_id} is unreadable ({err}); "
                          f"rebuild the cache") from None
        try:
            if os.fstat(fd).st_size != e["bytes"]:
                raise OSError(f"frame cache file {path} for video {video_id} has {os.fstat(fd).st_size} bytes, "
                              f"the manifest says {e['bytes']}; rebuild the cache")
            pos = 0
            for start, count in runs:
                want = count * fb
                got = os.preadv(fd, [buf[pos:pos + want]], e["offset"] + start * fb)
                if got != want:
                    raise OSError(f"frame cache file {path} for video {video_id}: short read; rebuild the cache")
                pos += want
        finally:
            os.close(fd)
        return out

    def frame(self, video_id: str, index: int) -> np.ndarray:
        """Frame `index` (0-based) of `video_id`: (R, R, 3) uint8, a new array (no decoding)."""
        return self.frames(video_id, [index])[0]  # (R, R, 3)

    def frames(self, video_id: str, indices: Optional[Sequence[int]] = None) -> np.ndarray:
        """Frames `indices` (default: all) of `video_id`: (N, R, R, 3) uint8, a new array."""
        n = self.num_frames(video_id)
        if indices is None:
            return self._read(video_id, [(0, n)])  # (T, R, R, 3)
        idx = [self._check_index(video_id, i, n) for i in indices]
        runs: list[tuple[int, int]] = []  # consecutive indices read in one call
        for i in idx:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
        return self._read(video_id, runs)

    def export_pngs(self, video_id: str, out_dir: str | os.PathLike,
                    indices: Optional[Sequence[int]] = None) -> list[Path]:
        """Write frames as `{video_id}_frame_{idx:05d}.png` (atomically); return the paths."""
        idx = list(range(self.num_frames(video_id))) if indices is None else list(indices)
        frames = self.frames(video_id, idx)  # (N, R, R, 3); validates all indices first
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return [save_png(img, Path(out_dir) / f"{video_id}_frame_{int(i):05d}.png") for i, img in zip(idx, frames)]


def open_frame_cache(data_dir: str | os.PathLike, resolution: int) -> FrameCache:
    """Open `data_dir/frames_{R}x{R}` for reading (FileNotFoundError if it was never built)."""
    root = cache_dir(data_dir, resolution)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no frame cache at {root} ({MANIFEST} missing): run build_frame_cache first")
    manifest = _read_manifest(root)
    if manifest is None:
        raise ValueError(f"{path}: not a valid frame-cache manifest; rebuild the cache")
    want = _header(resolution)
    bad = {k: manifest.get(k) for k, v in want.items() if manifest.get(k) != v}
    if bad:
        raise ValueError(f"{path}: manifest {bad} does not match this code's {want}; rebuild the cache")
    for vid, e in manifest["videos"].items():
        problem = _entry_problem(vid, e, resolution)
        if problem is not None:
            raise ValueError(f"{path}: {problem}; rebuild the cache")
    return FrameCache(root, manifest)
