"""Decode SSv2 webm videos to RGB arrays with PyAV (FFmpeg), optionally resized inside the decode.

Webm stores no frame count, so frames are counted by decoding; `container.decode` flushes the
decoder, so frame threading never loses the last frames. Truncation decodes without an exception,
so it is detected from the demuxer's "File ended prematurely" and the container's duration.
`size=R` squashes each frame to R x R (as the seed did) in the swscale pass that converts YUV to
planar RGB, with area averaging (measurements: docs/OPERATIONS.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

import av
import av.logging
import numpy as np
from av.video.reformatter import Interpolation

INTERPOLATION = Interpolation.AREA  # swscale flags of the resize (output: planar RGB)
INTERPOLATION_NAME = "swscale-area-gbrp"  # recorded in frame-cache manifests
TRUNCATION_TOLERANCE_FRAMES = 2.0  # decoded end this many frame intervals short of the duration


class VideoDecodeError(ValueError):
    """A video that cannot be decoded; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def _open(path: Path):
    if not path.exists():
        raise VideoDecodeError(path, "file does not exist")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "zero-byte file")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError) as e:
        raise VideoDecodeError(path, f"not a readable video container ({type(e).__name__}: {e})") from None


def decode_video(path: str | os.PathLike, size: Optional[int] = None, *, threads: int = 0) -> np.ndarray:
    """Every frame of `path` as RGB (T, H, W, 3) uint8, or (T, size, size, 3); `threads`: FFmpeg's
    (0 = its choice). VideoDecodeError for a missing, empty, truncated, corrupt or frameless file."""
    frames: list[np.ndarray] = []
    decode_into(path, frames.append, size, threads=threads)
    return np.stack(frames)  # (T, H, W, 3)


def decode_into(path: str | os.PathLike, sink: Callable[[np.ndarray], Any], size: Optional[int] = None,
                *, threads: int = 0) -> int:
    """Call `sink` with each decoded uint8 RGB frame (C-contiguous) and return the frame count. The
    checks of `decode_video` run after the last frame: on VideoDecodeError discard what was written."""
    path = Path(path)
    if size is not None:
        assert isinstance(size, int) and size > 0, f"size must be a positive int, got {size!r}"
    container = _open(path)
    n = 0
    old_level, old_skip = av.logging.get_level(), av.logging.get_skip_repeated()
    try:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        # full size: swscale's fast unscaled yuv420p -> rgb24; resized: planar RGB output (PyAV
        # returns it as (H, W, 3) RGB), which interpolates chroma at full resolution
        kwargs = ({"format": "gbrp", "width": size, "height": size, "interpolation": INTERPOLATION}
                  if size else {"format": "rgb24"})
        last = None
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)  # else a 2nd truncated file's message is swallowed
        with av.logging.Capture(local=True) as logs:
            try:
                for frame in container.decode(video=0):  # flushes the decoder at the end
                    sink(np.ascontiguousarray(frame.to_ndarray(**kwargs)))  # (H, W, 3)
                    n += 1
                    last = frame
            except av.FFmpegError as e:
                raise VideoDecodeError(path, f"corrupt or truncated: decoding failed after "
                                             f"{n} frames ({type(e).__name__}: {e})") from None
        if not n:
            raise VideoDecodeError(path, "no frames decoded (truncated or empty video stream)")
        _check_truncation(path, container, stream, last, n, logs)
    finally:
        av.logging.set_level(old_level)
        av.logging.set_skip_repeated(old_skip)
        container.close()
    return n


def _check_truncation(path: Path, container, stream, last, n: int, logs) -> None:
    """Raise if the demuxer reported a premature end or the decoded end falls short of the duration."""
    for _level, _name, message in logs:
        if "ended prematurely" in message:
            raise VideoDecodeError(path, f"truncated file: the container ended prematurely "
                                         f"after {n} decoded frames")
    rate = stream.average_rate or stream.guessed_rate
    if container.duration is None or last is None or last.time is None or not rate:
        return
    duration_s = container.duration / av.time_base
    end_s = float(last.time) + 1.0 / float(rate)
    if end_s < duration_s - TRUNCATION_TOLERANCE_FRAMES / float(rate):
        raise VideoDecodeError(path, f"truncated: {n} frames decoded up to {end_s:.3f}s but the "
                                     f"container says {duration_s:.3f}s")


def encode_webm(path: str | os.PathLike, frames: np.ndarray) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as an SSv2-like webm (VP9, yuv420p, 12 fps, crf 30), atomically."""
    from pecn_ml.utils.files import atomic_path
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, (frames.shape, frames.dtype)
    T, H, W, _ = frames.shape
    assert T >= 1, "need at least one frame"
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="webm") as out:
            stream = out.add_stream("libvpx-vp9", rate=12)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            stream.options = {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "b:v": "0", "crf": "30"}
            for img in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
            out.mux(stream.encode())  # flush the encoder
    return path
