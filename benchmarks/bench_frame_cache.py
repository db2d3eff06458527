"""Benchmark: building the frame cache vs the seed's PNG extraction vs the decoder alone.

    .venv/bin/python benchmarks/bench_frame_cache.py [--preset demo] [--max-videos 24] [--rounds 3]
                                                     [--workdir DIR] [--json out.json]

On the same synthetic SSv2 videos (pecn_ml.data.synthetic, demo preset: 190 videos of 23-64
frames at 240 x 320..427; else a built-in generator), in one run it measures, all in one process
with the same PyAV decoder settings (frame threading, FFmpeg's thread count):

  ceiling  decode_video(path) to full-resolution RGB arrays, nothing else.
  seed     the seed's data/video_loader.py method for ONE resolution R: decode to full-resolution
           RGB, PIL resize to R x R (Pillow's default bicubic), save one PNG per frame
           (`frames_{R}x{R}/{id}/{idx:05d}.png`). Also timed: all three resolutions from one decode.
  ours     build_frame_cache(data_dir, R, ids) into an empty cache: decode with the resize done
           by swscale, one .npy per video, manifest, fsync.

Equal work: "seed at R" and "ours at R" both turn every frame of the same videos into an R x R
RGB image on disk that training reads without decoding video. The seed's one pass for three
resolutions is compared with the sum of our three builds (we decode once per resolution).
frames/s = decoded video frames / wall seconds. The ceiling and our build run back to back in
each of --rounds rounds, and ratios are medians of the per-round ratios, in wall time and in CPU
time of the process (the CPU ratio barely moves when other jobs share the machine); the seed
runs once per resolution (it takes minutes). Then, on all videos, per round: a full build vs
adding the last 10% of videos to a cache of the first 90%, and a rebuild with nothing new.
Finally random access: read frame 20 of every video (ours: FrameCache.frame; seed: PIL open +
decode of the PNG). On a shared machine, compare ratios only within one run.

Measured (2 shared CPU cores, load average 4-10, demo preset, 24 videos / 968 frames for the
comparison, all 190 for the incremental case; ratios move by +-0.1 between runs):
  R    ours/ceiling wall|cpu   ours/seed wall|cpu   B/frame ours|seed PNG   add 10% / full
  96   1.07 | 0.74             3.8x | 4.4x           27651 | 12434           7.0%
  128  0.71 | 0.67             11.0x | 6.3x          49155 | 20183           8.2%
  224  0.63 | 0.60             29.6x | 17.5x         150531 | 48900          9.4%
  all three: seed (one decode) / ours (three builds) = 8.1x wall, 8.6x cpu
  read frame 20: ours 30-55 us, seed PNG 0.8-4.3 ms
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pecn_ml.data.frame_cache import build_frame_cache, cache_dir, open_frame_cache  # noqa: E402
from pecn_ml.data.video import decode_video, encode_webm  # noqa: E402

RESOLUTIONS = (96, 128, 224)


def disk_bytes(paths) -> tuple[int, int]:
    """(apparent bytes, allocated bytes incl. block rounding) of files."""
    app = alloc = 0
    for p in paths:
        st = os.stat(p)
        app += st.st_size
        alloc += st.st_blocks * 512
    return app, alloc


def make_videos(out: Path, preset: str, max_videos: int | None, log) -> list[str]:
    """Synthetic SSv2 videos under out/videos; returns the ids used."""
    try:
        from pecn_ml.data import synthetic
    except ImportError:
        synthetic = None
    if synthetic is not None and (out / synthetic.MANIFEST).is_file():
        log(f"reusing the synthetic SSv2 in {out}")
    elif synthetic is not None:
        config = getattr(synthetic.SyntheticConfig, preset)()
        t = time.perf_counter()
        summary = synthetic.write_synthetic_ssv2(out, config)
        log(f"generated synthetic SSv2 ({preset}) in {time.perf_counter() - t:.1f}s: {summary}")
    else:
        log("pecn_ml.data.synthetic not found: using the built-in generator")
        _fallback_videos(out / "videos", max_videos or 60)
    ids = sorted((p.stem for p in (out / "videos").glob("*.webm")), key=int)
    return ids[:max_videos] if max_videos else ids


def _fallback_videos(vdir: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        T, W = int(rng.integers(23, 65)), int(rng.integers(320, 428))
        yy, xx = np.mgrid[0:240, 0:W]
        bg = np.stack([(xx * rng.uniform(0.3, 1) + yy) % 256, (yy * rng.uniform(0.3, 1)) % 256,
                       rng.integers(0, 256, (240, W)) // 4 + 90], -1).astype(np.uint8)
        frames = np.repeat(bg[None], T, 0)
        for t in range(T):
            x = int(20 + t * (W - 80) / T)
            frames[t, 90:150, x:x + 50] = rng.integers(0, 256, 3)
        encode_webm(vdir / f"{1000 + i}.webm", frames)


def measure(fn, setup=None) -> tuple[float, float, object]:
    """(wall s, CPU s of this process incl. FFmpeg's threads, result) of one call of fn."""
    if setup is not None:
        setup()
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def paired(rounds: int, fns: dict, setups: dict | None = None) -> dict[str, list[tuple[float, float]]]:
    """Run every fn once per round, back to back, so each round's ratios see the same load."""
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            w, c, _ = measure(fn, (setups or {}).get(k))
            out[k].append((w, c))
    return out


def ratio(num: list[tuple[float, float]], den: list[tuple[float, float]], i: int) -> float:
    """Median over rounds of num/den times (i = 0 wall, 1 CPU)."""
    return float(statistics.median(n[i] / d[i] for n, d in zip(num, den)))


def ceiling(data: Path, ids) -> int:
    n = 0
    for vid in ids:
        n += decode_video(data / "videos" / f"{vid}.webm").shape[0]
    return n


def seed_method(data: Path, ids, resolutions, out: Path) -> tuple[int, list[Path]]:
    """Decode full-res, then per frame and resolution: PIL resize + PNG (the seed's way)."""
    n, files = 0, []
    for vid in ids:
        frames = decode_video(data / "videos" / f"{vid}.webm")  # (T, 240, W, 3)
        n += len(frames)
        for R in resolutions:
            d = out / f"frames_{R}x{R}" / vid
            d.mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(frames):
                p = d / f"{i:05d}.png"
                Image.fromarray(f).resize((R, R), Image.BICUBIC).save(p)
                files.append(p)
    return n, files


def linked_data_dir(src: Path, dst: Path) -> Path:
    """A data_dir sharing `src`'s videos (symlink) with its own, empty caches."""
    dst.mkdir(parents=True)
    (dst / "videos").symlink_to(src / "videos")
    return dst


def fresh(path: Path):
    return lambda: shutil.rmtree(path, ignore_errors=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo", help="SyntheticConfig preset (tiny, demo)")
    ap.add_argument("--max-videos", type=int, default=24,
                    help="videos for the seed/ceiling/ours comparison (0 = all); the incremental "
                         "case always uses all videos")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds of the fast measurements")
    ap.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep data here and reuse its videos on the next run (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731

    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="bench_frame_cache_"))
    data = tmp / "data"
    for old in [p for p in tmp.glob("*") if p != data] + list(data.glob("frames_*")):
        shutil.rmtree(old)  # results of an earlier run in --workdir
    try:
        all_ids = make_videos(data, args.preset, None, log)
        ids = all_ids[:args.max_videos] if args.max_videos else all_ids
        src_bytes = disk_bytes(data / "videos" / f"{v}.webm" for v in all_ids)[0]
        log(f"{len(all_ids)} videos ({src_bytes / len(all_ids) / 1e3:.1f} KB each on average) in {data}; "
            f"comparison on {len(ids)}, {args.rounds} paired rounds, os.cpu_count()={os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.1f}")
        frames = ceiling(data, ids[:2])  # warm-up (imports, codec init)
        frames = ceiling(data, ids)
        res: dict = {"videos": len(ids), "frames": frames, "rounds": args.rounds,
                     "cpu_count": os.cpu_count(), "resolutions": {}}

        # the seed, once (it is slow): all resolutions from one decode
        seed_dir = tmp / "seed_all"
        t_all, cpu_all, _ = measure(lambda: seed_method(data, ids, args.resolutions, seed_dir))
        shutil.rmtree(seed_dir)
        res.update(seed_all_s=t_all, seed_all_cpu_s=cpu_all)
        log(f"seed, {len(args.resolutions)} resolutions from one decode: {t_all:.2f}s (cpu {cpu_all:.2f}s) "
            f"= {frames / t_all:.1f} decoded frames/s")

        ours_total = ours_total_cpu = 0.0
        for R in args.resolutions:
            r: dict = {}
            seed_dir, cdir = tmp / f"seed_{R}", cache_dir(data, R)
            t_seed, cpu_seed, (_, files) = measure(lambda: seed_method(data, ids, [R], seed_dir))
            r.update(seed_s=t_seed, seed_cpu_s=cpu_seed, seed_fps=frames / t_seed)
            r["seed_bytes_per_frame"], r["seed_alloc_per_frame"] = (b / frames for b in disk_bytes(files))

            m = paired(args.rounds, {"ceiling": lambda: ceiling(data, ids),
                                     "ours": lambda: build_frame_cache(data, R, ids)},
                       {"ours": fresh(cdir)})
            t_ours, cpu_ours = min(m["ours"])
            t_ceil = min(m["ceiling"])[0]
            ours_total, ours_total_cpu = ours_total + t_ours, ours_total_cpu + cpu_ours
            npys = list(cdir.glob("*.npy"))
            assert len(npys) == len(ids)
            r.update(ours_s=t_ours, ours_cpu_s=cpu_ours, ours_fps=frames / t_ours, ceiling_fps=frames / t_ceil,
                     ours_over_ceiling=ratio(m["ceiling"], m["ours"], 0),
                     ours_over_ceiling_cpu=ratio(m["ceiling"], m["ours"], 1),
                     ours_over_seed=t_seed / t_ours, ours_over_seed_cpu=cpu_seed / cpu_ours)
            r["ours_bytes_per_frame"], r["ours_alloc_per_frame"] = (b / frames for b in disk_bytes(npys))

            # random access: frame 20 (or the last) of every video
            cache = open_frame_cache(data, R)
            idx = {v: min(20, cache.num_frames(v) - 1) for v in ids}
            t_read_ours = min(measure(lambda: [cache.frame(v, idx[v]) for v in ids])[0] for _ in range(3))
            t_read_png = min(measure(lambda: [np.asarray(Image.open(
                seed_dir / f"frames_{R}x{R}" / v / f"{idx[v]:05d}.png").convert("RGB")) for v in ids])[0]
                for _ in range(3))
            r["read_ours_us"], r["read_png_us"] = t_read_ours / len(ids) * 1e6, t_read_png / len(ids) * 1e6
            shutil.rmtree(seed_dir)

            # incremental, on all videos, paired per round: full build vs adding the last 10%
            inc = linked_data_dir(data, tmp / f"inc_{R}")
            k = len(all_ids) - max(1, len(all_ids) // 10)
            icache = cache_dir(inc, R)
            m2 = paired(args.rounds, {"full": lambda: build_frame_cache(inc, R, all_ids),
                                      "add": lambda: build_frame_cache(inc, R, all_ids),
                                      "noop": lambda: build_frame_cache(inc, R, all_ids)},
                        {"full": fresh(icache),
                         "add": lambda: (fresh(icache)(), build_frame_cache(inc, R, all_ids[:k]))})
            last = build_frame_cache(inc, R, all_ids)
            assert last.decoded == 0 and last.reused == len(all_ids)
            r.update(full_all_s=min(m2["full"])[0], incremental_s=min(m2["add"])[0], noop_s=min(m2["noop"])[0],
                     incremental_over_full=ratio(m2["add"], m2["full"], 0),
                     incremental_over_full_cpu=ratio(m2["add"], m2["full"], 1),
                     new_videos=len(all_ids) - k, all_videos=len(all_ids))
            shutil.rmtree(inc)
            res["resolutions"][R] = r

            log(f"\n== {R}x{R} ==")
            log(f"ceiling (decode to full-res RGB): {r['ceiling_fps']:.0f} frames/s (best round)")
            log(f"seed (decode + PIL resize + PNG): {t_seed:.2f}s (cpu {cpu_seed:.2f}s) = "
                f"{r['seed_fps']:.1f} frames/s, {r['seed_bytes_per_frame']:.0f} B/frame on disk "
                f"({r['seed_alloc_per_frame']:.0f} allocated)")
            log(f"ours (build_frame_cache):         {t_ours:.2f}s (cpu {cpu_ours:.2f}s) = "
                f"{r['ours_fps']:.0f} frames/s, {r['ours_bytes_per_frame']:.0f} B/frame on disk "
                f"({r['ours_alloc_per_frame']:.0f} allocated)")
            log(f"ours/ceiling = {r['ours_over_ceiling']:.2f} wall, {r['ours_over_ceiling_cpu']:.2f} cpu "
                f"(median of paired rounds; target >= 0.6)")
            log(f"ours/seed    = {r['ours_over_seed']:.1f}x wall, {r['ours_over_seed_cpu']:.1f}x cpu (target >= 3)")
            log(f"all {len(all_ids)} videos: full build {r['full_all_s']:.2f}s; add {r['new_videos']} new videos to a "
                f"90% cache {r['incremental_s']:.2f}s = {100 * r['incremental_over_full']:.1f}% wall, "
                f"{100 * r['incremental_over_full_cpu']:.1f}% cpu of the full build (target <= 15%); "
                f"nothing new {r['noop_s']:.2f}s")
            log(f"read frame 20 of each video: ours {r['read_ours_us']:.0f} us/frame, "
                f"seed PNG {r['read_png_us']:.0f} us/frame")

        res.update(ours_all_s=ours_total, ours_all_cpu_s=ours_total_cpu)
        log(f"\nall {len(args.resolutions)} resolutions: seed {t_all:.2f}s (one decode), ours {ours_total:.2f}s "
            f"({len(args.resolutions)} builds) -> ours/seed = {t_all / ours_total:.1f}x wall, "
            f"{cpu_all / ours_total_cpu:.1f}x cpu")
        log(f"load average now {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
        return res
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
