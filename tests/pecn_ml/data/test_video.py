"""Video decoding with PyAV: frame counts, resizing inside the decode, and clear errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from pecn_ml.data.video import VideoDecodeError, decode_into, decode_video, encode_webm


def smooth_frames(T=14, H=48, W=80, seed=0):
    """Gradients plus a moving block: compresses well and survives VP9 + 4:2:0 nearly intact."""
    yy, xx = np.mgrid[0:H, 0:W]
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        frames[t, ..., 0] = xx * 255 // max(W - 1, 1)
        frames[t, ..., 1] = yy * 255 // max(H - 1, 1)
        frames[t, ..., 2] = 60 + 10 * seed
        x0 = 4 + 3 * t
        frames[t, 16:32, x0:x0 + 12] = (230, 230, 230)
    frames[-1] = 255  # a white last frame: losing it would be visible
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames = smooth_frames()
    path = encode_webm(tmp_path_factory.mktemp("v") / "1.webm", frames)
    return path, frames


@pytest.mark.parametrize("threads", [0, 1, 4])
def test_decode_counts_every_frame_including_the_last(video, threads):
    path, frames = video
    out = decode_video(path, threads=threads)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert out[-1].min() > 240  # the white last frame was not lost to the decoder's delay
    assert np.abs(out.astype(int) - frames).mean() < 3.0


def test_webm_has_no_frame_count_so_we_decode(video):
    path, frames = video
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # why counting by decoding is needed
    assert decode_video(path, size=8).shape[0] == len(frames)


@pytest.mark.parametrize("size", [16, 32, 96])
def test_resize_inside_decode_matches_pil_resize_of_full_frames(video, size):
    path, _ = video
    full = decode_video(path)
    small = decode_video(path, size=size)
    assert small.shape == (len(full), size, size, 3) and small.dtype == np.uint8
    ref = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in full])
    assert np.abs(small.astype(int) - ref).mean() < 4.0


def test_decode_into_streams_the_same_frames(video):
    path, frames = video
    got = []
    n = decode_into(path, got.append, 24)
    assert n == len(got) == len(frames)
    assert all(f.flags.c_contiguous and f.shape == (24, 24, 3) for f in got)
    assert np.array_equal(np.stack(got), decode_video(path, size=24))


def test_decode_into_reports_truncation_after_the_frames(video, tmp_path):
    path, _ = video
    p = tmp_path / "7.webm"
    p.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 3 // 4])
    got = []
    with pytest.raises(VideoDecodeError, match="truncated"):
        decode_into(p, got.append, 16)
    assert 0 < len(got) < 14  # the sink saw frames: a writer must discard them (frame_cache does)


def test_odd_width_like_ssv2(tmp_path):
    frames = smooth_frames(T=5, H=24, W=43)
    path = encode_webm(tmp_path / "2.webm", frames)
    assert decode_video(path).shape == (5, 24, 43, 3)


def test_missing_file(tmp_path):
    with pytest.raises(VideoDecodeError, match="does not exist") as ei:
        decode_video(tmp_path / "404.webm")
    assert "404.webm" in str(ei.value) and ei.value.problem == "file does not exist"


def test_zero_byte_file(tmp_path):
    p = tmp_path / "0.webm"
    p.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"0\.webm: zero-byte file"):
        decode_video(p)


def test_garbage_file(tmp_path):
    p = tmp_path / "3.webm"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="not a readable video container") as ei:
        decode_video(p)
    assert "3.webm" in str(ei.value)


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(VideoDecodeError, match="not a regular file"):
        decode_video(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.8, 0.97])
def test_truncated_file_is_an_error_not_a_shorter_video(video, tmp_path, keep):
    path, _ = video
    data = path.read_bytes()
    p = tmp_path / "4.webm"
    for _ in range(2):  # twice: FFmpeg's log de-duplication must not hide the second one
        p.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(VideoDecodeError, match="truncated") as ei:
            decode_video(p, size=16)
        assert "4.webm" in str(ei.value)


def test_header_only_file_has_no_frames(video, tmp_path):
    path, _ = video
    p = tmp_path / "5.webm"
    p.write_bytes(path.read_bytes()[:400])
    with pytest.raises(VideoDecodeError, match="5.webm: (no frames decoded|not a readable|truncated)"):
        decode_video(p)


def test_audio_only_file_has_no_video_stream(tmp_path):
    p = tmp_path / "6.webm"
    with av.open(str(p), "w", format="webm") as out:
        s = out.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
        frame.sample_rate = 48000
        out.mux(s.encode(frame))
        out.mux(s.encode())
    with pytest.raises(VideoDecodeError, match="no video stream"):
        decode_video(p)


def test_bad_size_is_refused(video):
    with pytest.raises(AssertionError):
        decode_video(video[0], size=0)
