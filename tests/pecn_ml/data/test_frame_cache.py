"""Frame cache: build once, incremental reuse, failures isolated, crash safety, random access."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pecn_ml.data import frame_cache as fc
from pecn_ml.data.frame_cache import build_frame_cache, cache_dir, open_frame_cache
from pecn_ml.data.video import decode_video, encode_webm

R = 16
LENGTHS = {"11": 9, "12": 14, "13": 6, "14": 11}


def frames_for(T, seed, H=36, W=52):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 4 % 256, yy * 6 % 256, np.full_like(xx, 40 * seed % 256)], -1).astype(np.uint8)
    out = np.repeat(base[None], T, 0)
    for t in range(T):
        out[t, 8:20, 2 * t:2 * t + 10] = rng.integers(100, 255, 3)
    return out


def make_data(root: Path, lengths=LENGTHS) -> Path:
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for i, (vid, T) in enumerate(lengths.items()):
        encode_webm(root / "videos" / f"{vid}.webm", frames_for(T, i))
    return root


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "sthv2")


def manifest(root: Path) -> dict:
    return json.loads((cache_dir(root, R) / "manifest.json").read_text())


def test_build_and_read_back(data):
    logs = []
    rep = build_frame_cache(data, R, list(LENGTHS), log=logs.append)
    assert (rep.total, rep.decoded, rep.reused, rep.failed) == (4, 4, 0, {})
    assert rep.frames_written == sum(LENGTHS.values())
    assert rep.cache_dir == data / "frames_16x16" == cache_dir(data, R)
    assert rep.bytes == rep.cache_bytes == sum((rep.cache_dir / f"{v}.npy").stat().st_size for v in LENGTHS)
    assert any("frame cache 16x16: 4/4 videos" in line for line in logs)
    cache = open_frame_cache(data, R)
    assert cache.version == rep.version and cache.resolution == R and cache.root == rep.cache_dir
    assert cache.video_ids() == ["11", "12", "13", "14"] and cache.failures() == {}
    for vid, T in LENGTHS.items():
        assert cache.num_frames(vid) == T
        want = decode_video(data / "videos" / f"{vid}.webm", size=R)  # (T, R, R, 3)
        assert np.array_equal(cache.frames(vid), want)
        f = cache.frame(vid, T - 1)
        assert f.shape == (R, R, 3) and f.dtype == np.uint8 and np.array_equal(f, want[T - 1])
    assert cache.frames("12", [0, 5, 13]).shape == (3, R, R, 3)
    assert np.array_equal(cache.frames("12", [5, 0])[1], cache.frame("12", 0))
    assert cache.frames("12", []).shape == (0, R, R, 3)


def test_second_build_reuses_without_decoding(data, monkeypatch):
    first = build_frame_cache(data, R, list(LENGTHS))
    monkeypatch.setattr(fc, "decode_into", lambda *a, **k: pytest.fail("decoded again"))
    again = build_frame_cache(data, R, list(LENGTHS))
    assert (again.decoded, again.reused, again.frames_written, again.bytes) == (0, 4, 0, 0)
    assert again.version == first.version


def test_changed_source_is_redecoded_and_new_ids_added(data):
    first = build_frame_cache(data, R, ["11", "12", "13"])
    encode_webm(data / "videos" / "12.webm", frames_for(20, 9))
    rep = build_frame_cache(data, R, ["11", "12", "13", "14"])
    assert (rep.decoded, rep.reused) == (2, 2) and rep.frames_written == 20 + LENGTHS["14"]
    assert rep.version != first.version
    assert open_frame_cache(data, R).num_frames("12") == 20


def test_resolutions_are_separate_caches(data):
    build_frame_cache(data, 8, ["11"])
    build_frame_cache(data, R, ["11"])
    assert open_frame_cache(data, 8).frame("11", 0).shape == (8, 8, 3)
    assert open_frame_cache(data, R).frame("11", 0).shape == (R, R, 3)


def test_bad_videos_are_recorded_and_others_cached(data):
    vdir = data / "videos"
    (vdir / "20.webm").write_bytes(b"")
    good = (vdir / "12.webm").read_bytes()
    (vdir / "21.webm").write_bytes(good[: len(good) * 2 // 3])
    (vdir / "22.webm").write_bytes(b"not a video at all" * 100)
    ids = ["11", "20", "12", "21", "22", "23", "13"]  # 23 is missing
    rep = build_frame_cache(data, R, ids)
    assert rep.decoded == 3 and rep.total == 7
    assert set(rep.failed) == {"20", "21", "22", "23"}
    assert rep.failed["20"] == "zero-byte file"
    assert "truncated" in rep.failed["21"]
    assert "not a readable video container" in rep.failed["22"]
    assert rep.failed["23"] == "source video missing"
    cache = open_frame_cache(data, R)
    assert cache.video_ids() == ["11", "12", "13"] and cache.failures() == rep.failed
    assert not (cache.root / "21.npy").exists()
    with pytest.raises(KeyError, match="video 21 .*failed to decode .*truncated"):
        cache.frame("21", 0)
    # unchanged bad sources are remembered, not retried; a fixed one is decoded
    encode_webm(vdir / "20.webm", frames_for(7, 3))
    again = build_frame_cache(data, R, ids)
    assert (again.decoded, again.reused) == (1, 3) and set(again.failed) == {"21", "22", "23"}
    assert open_frame_cache(data, R).num_frames("20") == 7


def test_index_and_key_errors_name_video_and_index(data):
    build_frame_cache(data, R, ["13"])
    cache = open_frame_cache(data, R)
    with pytest.raises(IndexError, match=r"frame 6 out of range for video 13 with 6 frames \(valid 0..5"):
        cache.frame("13", 6)
    with pytest.raises(IndexError, match="frame -1 out of range for video 13"):
        cache.frame("13", -1)
    with pytest.raises(IndexError, match="frame 25 out of range for video 13"):
        cache.frames("13", [0, 25])
    with pytest.raises(KeyError, match="video 99 is not in the frame cache"):
        cache.num_frames("99")
    with pytest.raises(TypeError, match="must be an int"):
        cache.frame("13", 1.0)


def test_export_pngs(data, tmp_path):
    build_frame_cache(data, R, ["13"])
    cache = open_frame_cache(data, R)
    paths = cache.export_pngs("13", tmp_path / "png", indices=[0, 5])
    assert [p.name for p in paths] == ["13_frame_00000.png", "13_frame_00005.png"]
    assert np.array_equal(np.asarray(Image.open(paths[1])), cache.frame("13", 5))
    assert len(cache.export_pngs("13", tmp_path / "all")) == 6
    assert sorted(p.name for p in (tmp_path / "all").iterdir())[-1] == "13_frame_00005.png"


def test_crash_mid_build_keeps_finished_work_and_rerun_completes(data, monkeypatch):
    real, calls = fc.decode_into, []

    def flaky(path, sink, *a, **k):  # the 3rd video dies after two of its frames were written
        calls.append(path)
        if len(calls) == 3:
            def dying_sink(frame, n=[0]):
                sink(frame)
                n[0] += 1
                if n[0] == 2:
                    raise RuntimeError("simulated crash")
            return real(path, dying_sink, *a, **k)
        return real(path, sink, *a, **k)

    monkeypatch.setattr(fc, "decode_into", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_frame_cache(data, R, list(LENGTHS))
    m = manifest(data)
    assert sorted(m["videos"]) == ["11", "12"]  # flushed on the way out, only finished ones
    root = cache_dir(data, R)
    assert sorted(p.name for p in root.iterdir()) == [".lock", "11.npy", "12.npy", "manifest.json"]
    assert open_frame_cache(data, R).video_ids() == ["11", "12"]
    monkeypatch.setattr(fc, "decode_into", real)
    rep = build_frame_cache(data, R, list(LENGTHS))
    assert (rep.decoded, rep.reused, rep.failed) == (2, 2, {})


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pecn_ml.data import frame_cache as fc
    real, n = fc.decode_into, [0]
    def decode_then_die(path, sink, *a, **k):
        n[0] += 1
        if n[0] == 3:  # kill -9 in the middle of writing the 3rd video
            def dying_sink(frame, i=[0]):
                sink(frame)
                i[0] += 1
                if i[0] == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(path, dying_sink, *a, **k)
        return real(path, sink, *a, **k)
    fc.decode_into = decode_then_die
    fc.build_frame_cache(sys.argv[1], int(sys.argv[2]), ["11", "12", "13", "14"], flush_every_s=float(sys.argv[3]))
""")


@pytest.mark.parametrize("flush_every_s", [0.0, 1e9])
def test_kill_9_leaves_nothing_untrusted(data, flush_every_s):
    root = cache_dir(data, R)
    root.mkdir(parents=True)
    (root / ".11.npy.old.tmp").write_bytes(b"half a file")  # a stale temp file of an earlier crash
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(data), str(R), str(flush_every_s)],
                          cwd=Path(__file__).parents[3], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    names = {p.name for p in root.iterdir()}
    assert ".11.npy.old.tmp" not in names  # cleaned by the build that was then killed
    assert {"11.npy", "12.npy"} <= names
    assert [n for n in names if n.startswith(".13.npy.") and n.endswith(".tmp")]  # the torn write
    if flush_every_s == 0.0:  # flushed after each video: the two finished ones are trusted
        assert open_frame_cache(data, R).video_ids() == ["11", "12"]
    else:  # never flushed: nothing is trusted, the .npy files on disk are not in any manifest
        with pytest.raises(FileNotFoundError, match="run build_frame_cache first"):
            open_frame_cache(data, R)
    rep = build_frame_cache(data, R, list(LENGTHS))
    assert rep.failed == {} and rep.decoded + rep.reused == 4
    assert rep.reused == (2 if flush_every_s == 0.0 else 0)
    assert rep.cleaned == (1 if flush_every_s == 0.0 else 3)  # the torn temp (+ the 2 unlisted .npy)
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    cache = open_frame_cache(data, R)
    for vid, T in LENGTHS.items():
        assert cache.frames(vid).shape == (T, R, R, 3)


def test_untrusted_files_are_removed_or_redone(data):
    build_frame_cache(data, R, ["11", "12"])
    root = cache_dir(data, R)
    (root / "99.npy").write_bytes(b"junk")  # not in the manifest
    with open(root / "12.npy", "r+b") as f:  # listed but the wrong size (e.g. torn by a power cut)
        f.truncate(100)
    rep = build_frame_cache(data, R, ["11", "12"])
    assert not (root / "99.npy").exists()
    assert (rep.decoded, rep.reused) == (1, 1)
    assert open_frame_cache(data, R).frames("12").shape == (LENGTHS["12"], R, R, 3)


def test_manifest_of_other_format_or_corrupt_means_rebuild(data):
    build_frame_cache(data, R, ["11"])
    path = cache_dir(data, R) / "manifest.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "interpolation": "something-else"}))
    with pytest.raises(ValueError, match="rebuild the cache"):
        open_frame_cache(data, R)
    assert build_frame_cache(data, R, ["11"]).decoded == 1
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid frame-cache manifest"):
        open_frame_cache(data, R)
    assert build_frame_cache(data, R, ["11"]).decoded == 1


def test_second_concurrent_build_waits_for_the_first(data):
    root = cache_dir(data, R)
    root.mkdir(parents=True)
    logs, result = [], {}
    with fc._lock(root):            # a first builder holds the cache
        second = threading.Thread(target=lambda: result.update(
            report=build_frame_cache(data, R, ["11"], log=logs.append)))
        second.start()
        deadline = time.monotonic() + 30
        while not any("waiting for another builder" in line for line in logs):
            assert time.monotonic() < deadline and second.is_alive(), logs
            time.sleep(0.05)
        assert f"(pid {os.getpid()} on " in logs[0]  # names the holder
        time.sleep(0.3)
        assert second.is_alive() and not (root / "manifest.json").exists()
    second.join(timeout=60)
    assert result["report"].decoded == 1
    assert any("the other builder finished" in line for line in logs)


def test_two_builders_at_once_both_succeed_and_decode_each_video_once(data):
    start = threading.Barrier(2)
    reports, errors = [], []

    def build():
        start.wait()
        try:
            reports.append(build_frame_cache(data, R, list(LENGTHS)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(reports) == 2
    assert sorted((r.decoded, r.reused) for r in reports) == [(0, 4), (4, 0)]
    assert reports[0].version == reports[1].version == open_frame_cache(data, R).version


def test_waiting_builder_times_out_with_a_clear_error(data):
    root = cache_dir(data, R)
    root.mkdir(parents=True)
    with fc._lock(root):
        with pytest.raises(TimeoutError, match=r"another build_frame_cache \(pid \d+ on .*\) still holds"):
            build_frame_cache(data, R, ["11"], lock_timeout_s=0.5)
    assert build_frame_cache(data, R, ["11"]).decoded == 1


def test_bad_ids_are_refused_before_any_work(data):
    with pytest.raises(ValueError, match="decimal digits"):
        build_frame_cache(data, R, ["11", "../11"])
    assert not cache_dir(data, R).exists()


def test_workers_give_the_same_cache(data, tmp_path):
    build_frame_cache(data, R, list(LENGTHS), workers=1)
    other = make_data(tmp_path / "copy")
    two = build_frame_cache(other, R, list(LENGTHS) + ["77"], workers=2)
    assert two.decoded == 4 and set(two.failed) == {"77"}
    a, b = open_frame_cache(data, R), open_frame_cache(other, R)
    for vid in LENGTHS:
        assert np.array_equal(a.frames(vid), b.frames(vid))


def _child_read(cache, q):
    q.put([cache.frame(v, 3).sum() for v in cache.video_ids()])


def test_cache_is_picklable_and_usable_in_forked_workers(data):
    build_frame_cache(data, R, list(LENGTHS))
    cache = open_frame_cache(data, R)
    want = [int(cache.frame(v, 3).sum()) for v in cache.video_ids()]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.version == cache.version and [int(clone.frame(v, 3).sum()) for v in clone.video_ids()] == want
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(cache, q))
    p.start()
    got = q.get(timeout=60)
    p.join(60)
    assert [int(x) for x in got] == want


def test_files_are_plain_npy_and_reads_check_their_size(data):
    build_frame_cache(data, R, ["12"])
    cache = open_frame_cache(data, R)
    assert np.array_equal(np.load(cache.path("12"), mmap_mode="r")[7], cache.frame("12", 7))
    assert np.array_equal(cache.frames("12", [3, 4, 5, 9, 2]), np.load(cache.path("12"))[[3, 4, 5, 9, 2]])
    with open(cache.path("12"), "ab") as f:
        f.write(b"x")
    with pytest.raises(OSError, match="has .* bytes, the manifest says .*rebuild"):
        cache.frame("12", 0)
    cache.path("12").unlink()
    with pytest.raises(OSError, match="unreadable"):
        cache.frame("12", 0)


def test_malformed_manifest_entry_is_refused_and_rebuilt(data):
    build_frame_cache(data, R, ["11", "12"])
    path = cache_dir(data, R) / "manifest.json"
    m = json.loads(path.read_text())
    m["videos"]["12"]["offset"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="entry 12: bytes .* rebuild the cache"):
        open_frame_cache(data, R)
    rep = build_frame_cache(data, R, ["11", "12"])
    assert (rep.decoded, rep.reused) == (1, 1)
    assert open_frame_cache(data, R).frames("12").shape == (LENGTHS["12"], R, R, 3)
    # a tampered id must never become a path, even for a video this build does not request
    m = json.loads(path.read_text())
    m["videos"]["../../x"] = {**m["videos"]["11"], "file": "../../x.npy"}
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="decimal digits"):
        open_frame_cache(data, R)
    assert build_frame_cache(data, R, ["12"]).reused == 1
    assert open_frame_cache(data, R).video_ids() == ["11", "12"]


def test_open_missing_cache_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no frame cache at .*frames_16x16"):
        open_frame_cache(tmp_path, R)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    from pecn_ml.data import synthetic
    out = tmp_path_factory.mktemp("synthetic") / "sthv2"
    cfg = synthetic.SyntheticConfig.tiny(templates=("Something falling like a rock",
                                                    "Pushing something from left to right"),
                                         num_test=0, num_other_templates=0)
    synthetic.write_synthetic_ssv2(out, cfg)
    return out, synthetic.load_specs(out)


def test_synthetic_end_to_end_filter_then_cache_matches_render(synthetic_data):
    """Pixel check: cached frame i is the rendered frame i (resized), not a neighbour."""
    from pecn_ml.data.annotations import FilterConfig, filter_annotations
    from pecn_ml.data.synthetic import render_video
    data, specs = synthetic_data
    res = filter_annotations(data, FilterConfig())
    assert res.counts["train"] == {"move_object": 1, "drop_object": 1, "cover_object": 0, "back_and_forth": 0}
    assert res.counts["validation"]["drop_object"] == 1  # the capitalised template, from real SSv2 JSON
    ids = [e["id"] for name in res.entries for e in res.entries[name]]
    assert sorted(ids) == sorted(specs)
    size = 64
    rep = build_frame_cache(data, size, ids)
    assert rep.decoded == 4 and not rep.failed
    cache = open_frame_cache(data, size)
    for vid in ids:
        spec = specs[vid]
        ref = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC))
                        for f in render_video(spec)]).astype(int)  # (T, R, R, 3)
        got = cache.frames(vid).astype(int)
        assert cache.num_frames(vid) == spec.num_frames == len(ref)
        assert np.abs(got - ref).mean() < 4.0  # VP9 at crf 24 + two different resizers
        moving = 0
        for i in range(1, len(ref)):
            mask = np.abs(ref[i] - ref[i - 1]).sum(-1) > 60  # pixels that change at frame i
            if mask.sum() >= 5:
                moving += 1
                assert np.abs(got[i] - ref[i])[mask].mean() < np.abs(got[i] - ref[i - 1])[mask].mean(), (vid, i)
        assert moving >= 5
