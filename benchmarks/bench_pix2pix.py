"""Benchmark: InstructPix2Pix data loading (ours vs the seed's PNGs) and training steps/s with and
without cached latents/embeddings, all in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pix2pix.py [--videos 40] [--steps 24]
        [--loader-resolution 224] [--train-resolutions 96 224] [--repeat 3] [--no-e2e]
        [--workdir DIR] [--json out.json]

1. Loader, pairs/s (frames 20 -> 21 at --loader-resolution, the seed's 224 px by default):
   ours  `FramePairDataset` over the real frame cache (`pecn_ml.data.frame_cache`, built here
         from synthetic WebM videos; an in-memory cache if that module is missing -- the output
         says which);
   seed  the seed's path emulated: PNG files `frames_RxR/{id}_frame_{idx:05d}.png`, opened with
         PIL, `.convert("RGB")`, resized to R x R, to numpy, to torch, `2 * (x / 255) - 1` --
         per item, every epoch (the HF `datasets` overhead of the seed is not counted).
   Target: ours >= 5x the seed.
2. Training micro-steps/s on the same tiny model (`pecn_ml.models.tiny`) at each of
   --train-resolutions (the demo's 96 px and the seed's 224 px), batch 4, the same per-step code
   as `train_pix2pix` (--steps at the smallest resolution, fewer at larger ones, at least 6):
   uncached  loader -> VAE encode of input and target -> text encoder -> step -> AdamW;
   cached    index into cached VAE posteriors / prompt embeddings -> step -> AdamW
             (encoding all pairs once is timed separately).
   Target: cached >= 1.5x uncached.
   The tiny VAE is light next to the tiny UNet at 96 px, so the gain grows with resolution; for
   Stable Diffusion-sized models see bench_pix2pix_gpu.py.
3. (unless --no-e2e) `train_pix2pix` end to end at the smallest resolution, cache on vs off,
   3 epochs, wall seconds (model loading, cache building and the final save included).

Timings on a shared machine are noisy: runs of A and B are interleaved and the best of
--repeat is kept; rates per wall second and per CPU second of this process are both reported
(with OMP_NUM_THREADS=1 the CPU-time ratio is the stable one under contention). Compare ratios
within one run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pecn_ml.data.pairs import FramePairDataset, collate_pairs  # noqa: E402

LABELS = ("pushing something from left to right", "dropping something into something",
          "covering something with something", "throwing something in the air and catching it")


# --- data -------------------------------------------------------------------------------------

def synthetic_frames(i: int, T: int = 30, H: int = 240, W: int = 320) -> np.ndarray:
    """(T, H, W, 3) uint8: textured background, a moving box (PNG-compressible like real frames)."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:H, 0:W]
    bg = np.stack([(xx * rng.uniform(0.3, 1) + yy) % 256, (yy * rng.uniform(0.3, 1)) % 256,
                   rng.integers(0, 256, (H, W)) // 4 + 90], -1).astype(np.uint8)
    frames = np.repeat(bg[None], T, 0)
    for t in range(T):
        x = int(20 + t * (W - 80) / T)
        frames[t, 90:150, x:x + 50] = rng.integers(0, 256, 3)
    return frames


class MemoryFrameCache:
    """Fallback frame cache in memory (same contract as pecn_ml.data.frame_cache.FrameCache)."""

    def __init__(self, videos: dict[str, np.ndarray], resolution: int):
        self.resolution, self.version = resolution, f"memory-{resolution}"
        self._frames = {}
        for vid, frames in videos.items():
            self._frames[vid] = np.stack([np.asarray(Image.fromarray(f).resize(
                (resolution, resolution), Image.BICUBIC)) for f in frames])

    def num_frames(self, vid: str) -> int:
        return len(self._frames[vid])

    def frame(self, vid: str, idx: int) -> np.ndarray:
        return self._frames[vid][idx].copy()


def make_caches(work: Path, n: int, resolutions: list[int], log) -> tuple[dict, list[str], str]:
    """{R: cache}, the video ids and which kind of cache was used."""
    ids = [str(1000 + i) for i in range(n)]
    try:
        from pecn_ml.data.frame_cache import build_frame_cache, open_frame_cache
        from pecn_ml.data.video import encode_webm
    except ImportError:
        log("pecn_ml.data.frame_cache not found: in-memory frame cache")
        videos = {v: synthetic_frames(i) for i, v in enumerate(ids)}
        return {r: MemoryFrameCache(videos, r) for r in resolutions}, ids, "in-memory"
    vdir = work / "data" / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i, v in enumerate(ids):
        if not (vdir / f"{v}.webm").exists():
            encode_webm(vdir / f"{v}.webm", synthetic_frames(i))
    log(f"{n} synthetic WebM videos (30 frames, 320x240) in {time.perf_counter() - t:.1f}s")
    caches = {}
    for r in resolutions:
        t = time.perf_counter()
        build_frame_cache(work / "data", r, ids)
        caches[r] = open_frame_cache(work / "data", r)
        log(f"frame cache {r}x{r} built in {time.perf_counter() - t:.1f}s")
    return caches, ids, "real (pecn_ml.data.frame_cache, .npy per video)"


def annotations(ids: list[str]) -> list[dict]:
    return [{"id": v, "label": LABELS[i % len(LABELS)], "template": LABELS[i % len(LABELS)], "placeholders": [],
             "task": ""} for i, v in enumerate(ids)]


class SeedPngPairs:
    """The seed's loading, emulated: PNG per frame, PIL + numpy + torch per item."""

    def __init__(self, frames_dir: Path, ann: list[dict], resolution: int,
                 input_idx: int = 20, target_idx: int = 21):
        self.dir, self.ann, self.r = frames_dir, ann, resolution
        self.input_idx, self.target_idx = input_idx, target_idx

    def __len__(self) -> int:
        return len(self.ann)

    def _load(self, vid: str, idx: int) -> torch.Tensor:
        image = Image.open(self.dir / f"{vid}_frame_{idx:05d}.png").convert("RGB")
        image = image.resize((self.r, self.r))                              # diffusers convert_to_np
        arr = np.array(image).transpose(2, 0, 1)                           # (3, R, R)
        return 2 * (torch.tensor(arr).float() / 255) - 1

    def __getitem__(self, i: int) -> dict:
        e = self.ann[i]
        return {"video_id": e["id"], "input": self._load(e["id"], self.input_idx),
                "target": self._load(e["id"], self.target_idx),
                "prompt": f"Generate a future frame of this action: {e['label']}"}


def best_rate(fns: dict, count: int, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """Items per wall second and per CPU second (this process) of each fn, best of `repeat`,
    runs interleaved. With one torch thread the CPU-time rate hardly moves when other processes
    share the cores; the wall-time rate does."""
    wall = {k: 0.0 for k in fns}
    cpu = {k: 0.0 for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w, time.process_time() - c
            wall[name] = max(wall[name], count / w)
            cpu[name] = max(cpu[name], count / max(c, 1e-9))
    return wall, cpu


def bench_loader(cache, ann: list[dict], work: Path, repeat: int, log) -> dict:
    r = cache.resolution
    ours = FramePairDataset(cache, ann, input_idx=20, target_idx=21)
    png_dir = work / "seed_pngs" / f"frames_{r}x{r}"
    png_dir.mkdir(parents=True, exist_ok=True)
    for v in ours.video_ids:  # the seed kept every frame as PNG; pairs need frames 20 and 21
        for idx in (20, 21):
            Image.fromarray(cache.frame(v, idx)).save(png_dir / f"{v}_frame_{idx:05d}.png")
    seed = SeedPngPairs(png_dir, [a for a in ann if a["id"] in set(ours.video_ids)], r)
    a, b = ours[0], seed[0]
    assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"]), \
        "ours and the seed must load identical tensors"
    n = len(ours)
    rates, cpu = best_rate({"ours": lambda: [ours[i] for i in range(n)],
                            "seed": lambda: [seed[i] for i in range(n)]}, n, repeat)
    out = {"resolution": r, "pairs": n, "ours_pairs_per_s": round(rates["ours"], 1),
           "seed_pairs_per_s": round(rates["seed"], 1),
           "ratio": round(rates["ours"] / rates["seed"], 2),
           "ratio_cpu_time": round(cpu["ours"] / cpu["seed"], 2)}
    log(f"loader {r}px: ours {out['ours_pairs_per_s']} pairs/s, seed PNG {out['seed_pairs_per_s']} "
        f"pairs/s -> {out['ratio']}x wall, {out['ratio_cpu_time']}x CPU time (target >= 5x)")
    return out


# --- training steps ---------------------------------------------------------------------------

def bench_steps(model_dir: Path, ds: FramePairDataset, work: Path, steps: int, repeat: int,
                log) -> dict:
    from pecn_ml.models.pix2pix import encode_prompts, load_pix2pix_components
    from pecn_ml.training.latent_cache import LatentStore, encode_dataset
    from pecn_ml.training.pix2pix import (cached_pair_batch, draw_step_randomness,
                                          encode_pair_batch, step_generator, training_step)

    p = load_pix2pix_components(model_dir)
    p.unet.train()
    cpu = torch.device("cpu")
    opt = torch.optim.AdamW(p.unet.parameters(), lr=1e-5)
    empty = encode_prompts(p.tokenizer, p.text_encoder, [""])
    sf = p.vae.config.scaling_factor
    t = time.perf_counter()
    cached = encode_dataset(LatentStore(work / "latent_cache", p.vae, p.tokenizer, p.text_encoder), ds)
    encode_s = time.perf_counter() - t
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_pairs,
                                         drop_last=True)
    perm = torch.randperm(len(ds))

    def step(batch, i):
        draws = draw_step_randomness(batch.target_mean.shape, 1000, generator=step_generator(0, i, cpu),
                                     dtype=torch.float32, device=cpu)
        loss = training_step(p.unet, p.noise_scheduler, batch, draws, empty_prompt_embeds=empty,
                             conditioning_dropout_prob=0.05, scaling_factor=sf)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def run_uncached():
        done = 0
        while done < steps:
            for batch in loader:
                step(encode_pair_batch(p.vae, p.tokenizer, p.text_encoder, batch), done)
                done += 1
                if done == steps:
                    return

    def run_cached():
        for i in range(steps):
            idx = perm[(i * 4) % (len(ds) - 3):][:4]
            step(cached_pair_batch(cached, idx, cpu), i)

    run_cached(), run_uncached()  # warm-up
    rates, cpu = best_rate({"uncached": run_uncached, "cached": run_cached}, steps, repeat)
    out = {"resolution": ds.resolution, "batch": 4, "micro_steps": steps,
           "uncached_steps_per_s": round(rates["uncached"], 3),
           "cached_steps_per_s": round(rates["cached"], 3),
           "ratio": round(rates["cached"] / rates["uncached"], 2),
           "uncached_steps_per_cpu_s": round(cpu["uncached"], 3),
           "cached_steps_per_cpu_s": round(cpu["cached"], 3),
           "ratio_cpu_time": round(cpu["cached"] / cpu["uncached"], 2),
           "encode_all_pairs_s": round(encode_s, 2), "pairs": len(ds),
           "cache_megabytes": round(cached.nbytes() / 2 ** 20, 2)}
    log(f"train steps {ds.resolution}px: uncached {out['uncached_steps_per_s']} steps/s, cached "
        f"{out['cached_steps_per_s']} steps/s -> {out['ratio']}x wall, {out['ratio_cpu_time']}x "
        f"CPU time (target >= 1.5x); encoding {len(ds)} pairs once took {out['encode_all_pairs_s']}s")
    return out


def bench_e2e(model_dir: Path, ds: FramePairDataset, work: Path, log) -> dict:
    from pecn_ml.training.pix2pix import Pix2PixTrainConfig, train_pix2pix

    out = {}
    for cache_latents in (False, True):
        cfg = Pix2PixTrainConfig.demo(resolution=ds.resolution, num_train_epochs=3,
                                      num_validation_samples=0, cache_latents=cache_latents,
                                      torch_threads=torch.get_num_threads())
        t = time.perf_counter()
        res = train_pix2pix(model_dir, ds, cfg, work / f"e2e_{cache_latents}", resume=False)
        out["cached" if cache_latents else "uncached"] = {
            "wall_s": round(time.perf_counter() - t, 2), "steps": res.steps,
            "final_loss": round(res.final_loss, 4)}
    out["ratio"] = round(out["uncached"]["wall_s"] / out["cached"]["wall_s"], 2)
    log(f"train_pix2pix end to end ({out['cached']['steps']} steps): uncached "
        f"{out['uncached']['wall_s']}s, cached {out['cached']['wall_s']}s (cache built in the run) "
        f"-> {out['ratio']}x")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--steps", type=int, default=24, help="micro-steps per timed run")
    ap.add_argument("--loader-resolution", type=int, default=224)
    ap.add_argument("--train-resolutions", type=int, nargs="+", default=[96, 224])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    log(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="bench_pix2pix_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        resolutions = sorted(set(args.train_resolutions))
        caches, ids, kind = make_caches(work, args.videos,
                                        sorted({args.loader_resolution, *resolutions}), log)
        ann = annotations(ids)
        result = {"frame_cache": kind, "videos": len(ids), "torch_threads": torch.get_num_threads()}
        result["loader"] = bench_loader(caches[args.loader_resolution], ann, work, args.repeat, log)
        from pecn_ml.models.tiny import build_tiny_models
        model_dir = build_tiny_models(work / "tiny").pix2pix
        result["train_steps"] = []
        for r in resolutions:
            ds = FramePairDataset(caches[r], ann, add_progress=True)
            steps = max(6, round(args.steps * (resolutions[0] / r) ** 2))
            result["train_steps"].append(bench_steps(model_dir, ds, work / f"r{r}", steps,
                                                     args.repeat, log))
        if not args.no_e2e:
            ds = FramePairDataset(caches[resolutions[0]], ann, add_progress=True)
            result["end_to_end"] = bench_e2e(model_dir, ds, work, log)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
