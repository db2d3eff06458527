"""`make gpu-check`: the real-size models on this machine's GPU(s) for a few optimizer steps, and the
projected wall time of the full experiment here (docs/OPERATIONS.md, "gpu-check").

    python -m pecn_ml.gpu_check [--steps 6] [--train-videos N] [--variants 4] [--gpus 4,8] [--skip-bench] [--keep]

Without CUDA it prints one line saying why and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from pecn_ml.utils.gpu_devices import pool_slots

EXIT_NO_CUDA = 2
REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_pix2pix_gpu.py"
PACNET_STEPS = 4            # optimizer steps per PAC-Net epoch in the check
PACNET_VAL_VIDEOS = 8
GIB = 2 ** 30


@dataclass(frozen=True)
class Experiment:
    """The full run a projection is for (`from_profile`: the full profile's sizes)."""

    train_videos: int                 # the filtered training set (one frame pair per video)
    val_videos: int                   # every eval set (PAC-Net validates on them each epoch)
    variants: int = 4                 # the seed's four (the platform trains six: --variants 6)
    pix2pix_epochs: int = 40
    pix2pix_global_batch: int = 16    # batch x processes x accumulation
    pacnet_heads: int = 2
    pacnet_epochs: int = 30
    pacnet_global_batch: int = 8
    eval_sets: int = 2                # an evaluation step scores its variant on both
    samples_per_eval_set: int = 100
    latent_frames: int = 3            # frames 20, 21, 25 of every training video, encoded once

    @classmethod
    def from_profile(cls, profile, train_videos: Optional[int] = None, variants: int = 4) -> "Experiment":
        """The sizes of `profile` (the full one: 2,000 training and 100 validation videos per task)."""
        tasks = len(profile.filter.task_map)
        p2p, pac = profile.pix2pix_train, profile.pacnet_train
        return cls(train_videos=train_videos or profile.filter.train_per_task * tasks,
                   val_videos=profile.filter.val_per_task * tasks, variants=variants,
                   pix2pix_epochs=p2p.num_train_epochs,
                   pix2pix_global_batch=p2p.train_batch_size * p2p.gradient_accumulation_steps,
                   pacnet_epochs=pac.epochs, pacnet_global_batch=pac.batch_size,
                   samples_per_eval_set=profile.sampling.num_samples)

    @property
    def evaluations(self) -> int:
        """(variant, eval set) pairs, the seed's count of evaluations."""
        return self.variants * self.eval_sets

    def pix2pix_steps(self) -> int:
        """Optimizer steps of one variant."""
        return self.pix2pix_epochs * math.ceil(self.train_videos / self.pix2pix_global_batch)

    def pacnet_steps(self) -> int:
        """Optimizer steps of one PAC-Net head."""
        return self.pacnet_epochs * math.ceil(self.train_videos / self.pacnet_global_batch)


@dataclass(frozen=True)
class Timings:
    """What K = `processes` GPUs measured per training step (global batch as in `Experiment`);
    inference rates are one GPU's."""

    processes: int
    pix2pix_s_per_step: float
    pacnet_s_per_step: float
    pacnet_s_per_video: float         # PAC-Net inference: validation, progress_estimates
    eval_s_per_sample: float          # sampling + the evaluation's VAE round trips
    encode_s_per_frame: float = 0.0   # the latent cache's VAE encoding


def project(experiment: Experiment, timings: Timings, gpus: int) -> dict[str, float]:
    """Seconds per phase on `gpus` GPUs with a `gpu` pool of `pool_slots(gpus, K)`, phases one after
    another (an upper bound); CPU work (decoding, saves, grids, PNGs, metrics) is not counted."""
    e, t = experiment, timings
    slots = pool_slots(gpus, t.processes)
    head = e.pacnet_steps() * t.pacnet_s_per_step + e.pacnet_epochs * e.val_videos * t.pacnet_s_per_video
    variant = e.pix2pix_steps() * t.pix2pix_s_per_step
    evaluation = e.eval_sets * e.samples_per_eval_set * t.eval_s_per_sample
    phases = {
        "pacnet": math.ceil(e.pacnet_heads / slots) * head,
        "progress_estimates": (e.train_videos + e.val_videos) * t.pacnet_s_per_video,
        "latent_cache": e.latent_frames * e.train_videos * t.encode_s_per_frame,
        "ip2p_model": math.ceil(e.variants / slots) * variant,
        "evaluation": math.ceil(e.variants / slots) * evaluation,
    }
    return {**phases, "total": sum(phases.values()), "pool_limit": float(slots)}


def format_duration(seconds: float) -> str:
    for size, unit in ((3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def projection_table(experiment: Experiment, plans: Sequence[tuple[int, Timings]]) -> str:
    """One row per (GPUs, timings): pool limit, each phase and the total."""
    from pecn_ml.rehearsal import text_table

    phases = ("pacnet", "progress_estimates", "latent_cache", "ip2p_model", "evaluation", "total")
    rows = [("plan", "gpu pool", *phases)]
    for gpus, t in plans:
        p = project(experiment, t, gpus)
        rows.append((f"{gpus} GPU{'s' if gpus > 1 else ''}, K={t.processes}", str(int(p["pool_limit"])),
                     *(format_duration(p[k]) for k in phases)))
    return text_table(rows, left=(0,))


def plans_for(visible_gpus: int, extra_gpus: Sequence[int], single: Timings,
              pair: Optional[Timings]) -> list[tuple[int, Timings]]:
    """1 GPU, the visible ones and `extra_gpus`, with K = 1 and (when measured) K = 2, at the
    per-GPU speed measured here."""
    counts = sorted({1, visible_gpus, *extra_gpus})
    plans = [(n, single) for n in counts]
    if pair is not None:
        plans += [(n, pair) for n in counts if n >= 2]
    return plans


def describe_experiment(e: Experiment) -> str:
    return (f"{e.train_videos:,} training videos; {e.variants} variants x {e.pix2pix_epochs} epochs = "
            f"{e.pix2pix_steps():,} steps of {e.pix2pix_global_batch} each; PAC-Net {e.pacnet_heads} heads x "
            f"{e.pacnet_epochs} epochs = {e.pacnet_steps():,} steps of {e.pacnet_global_batch} each, validated on "
            f"{e.val_videos} videos; {e.evaluations} evaluations x {e.samples_per_eval_set} samples")


def random_videos(n: int, frames: int, resolution: int):
    """(an `ArrayFrameCache` of `n` videos of random pixels, their annotation entries)."""
    import numpy as np

    from pecn_ml.training.pacnet_data import ArrayFrameCache

    rng = np.random.default_rng(0)
    videos = {f"{i:06d}": rng.integers(0, 256, (frames, resolution, resolution, 3), dtype=np.uint8)
              for i in range(n)}
    entries = [{"id": vid, "label": "pushing a cup from left to right",
                "template": "Pushing [something] from left to right", "placeholders": ["a cup"],
                "task": "move_object"} for vid in videos]
    return ArrayFrameCache(videos, version=f"gpu-check-0-{n}x{frames}x{resolution}"), entries


def pix2pix_config(steps: int, processes: int, latent_dir: str):
    """The full profile's InstructPix2Pix config for `steps` steps on `processes` ranks (same global
    batch), no checkpoint, no validation grid."""
    from pecn_ml.profiles import full_profile

    full = full_profile().pix2pix_train
    accumulation = max(1, full.gradient_accumulation_steps // processes)
    return replace(full, gradient_accumulation_steps=accumulation, max_train_steps=steps,
                   checkpointing_steps=steps + 1, num_validation_samples=0, latent_cache_dir=latent_dir,
                   log_every_s=60.0)


def pacnet_config(processes: int):
    """The full profile's PAC-Net config for the check: two epochs, per-rank batch divided by K."""
    from pecn_ml.profiles import full_profile

    full = full_profile().pacnet_train
    return replace(full, epochs=2, batch_size=max(1, full.batch_size // processes), log_every_s=60.0)


def _timed(run: Callable[[int], object], warm_up: int, size: int) -> float:
    """Seconds of `run(size)` after a warm-up `run(warm_up)`, the GPU's queued work finished before and after."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    run(warm_up)
    sync()
    t0 = time.perf_counter()
    run(size)
    sync()
    return time.perf_counter() - t0


def measure_pix2pix(folders, work: Path, steps: int, processes: int, log: Callable) -> dict:
    from pecn_ml.data.pairs import FramePairDataset
    from pecn_ml.training.pix2pix import train_pix2pix

    config = pix2pix_config(steps, processes, str(work / "latents"))
    global_batch = config.train_batch_size * processes * config.gradient_accumulation_steps
    cache, entries = random_videos(global_batch * steps, frames=22, resolution=config.resolution)
    pairs = FramePairDataset(cache, entries, input_idx=20, target_idx=21)
    result = train_pix2pix(folders.pix2pix, pairs, config, work / "pix2pix", log=log, resume=False)
    encoded = 2 * len(pairs)
    return {"s_per_step": result.seconds_per_step, "steps": result.steps, "global_batch": result.global_batch_size,
            "samples_per_s": result.global_batch_size / result.seconds_per_step,
            "latent_cache_s": result.latent_cache.get("seconds"), "encoded_frames": encoded,
            "encode_s_per_frame": (result.latent_cache.get("seconds") or 0.0) / encoded,
            "mixed_precision": config.mixed_precision, "resolution": config.resolution,
            "per_process_batch": config.train_batch_size, "accumulation": config.gradient_accumulation_steps}


def measure_pacnet(folders, work: Path, processes: int, log: Callable) -> dict:
    import torch

    from pecn_ml.models.pacnet import PacNetConfig, load_pacnet
    from pecn_ml.profiles import full_profile
    from pecn_ml.progress_estimation import estimate_for_entries
    from pecn_ml.training.pacnet import train_pacnet
    from pecn_ml.utils.accel import process_rank

    config = pacnet_config(processes)
    n_train = config.batch_size * processes * PACNET_STEPS
    cache, entries = random_videos(n_train + PACNET_VAL_VIDEOS, frames=24, resolution=full_profile().pacnet_resolution)
    model_config = PacNetConfig(resnet_name=str(folders.resnet), clip_name=str(folders.clip_text), head="regression")
    epochs: list[dict] = []
    result = train_pacnet(model_config, config, cache, entries[:n_train], entries[n_train:], work / "pacnet",
                          log=log, resume=False, on_epoch_end=lambda _epoch, row: epochs.append(row))
    epoch_s = epochs[-1]["seconds"]      # the second epoch: its steps and the validation of 8 videos
    out = {"global_batch": config.batch_size * processes, "mixed_precision": config.mixed_precision,
           "per_process_batch": config.batch_size, "epoch_seconds": [r["seconds"] for r in epochs]}
    if process_rank()[0] == 0:  # inference as progress_estimates runs it: one GPU, batches of 4 x batch
        model = load_pacnet(result.best_dir, "cuda" if torch.cuda.is_available() else "cpu")
        batch = full_profile().pacnet_train.batch_size * 4

        def estimate(n: int) -> None:
            estimate_for_entries(model, cache, entries[:n], batch_size=batch)

        out["s_per_video"] = _timed(estimate, batch, len(entries)) / len(entries)
        del model
        torch.cuda.empty_cache()
        # the validation's share of the epoch out (each rank predicts 1/K of the videos)
        epoch_s = max(epoch_s - PACNET_VAL_VIDEOS * out["s_per_video"] / processes, 0.5 * epoch_s)
    out["s_per_step"] = epoch_s / PACNET_STEPS
    out["samples_per_s"] = out["global_batch"] / out["s_per_step"]
    return out


def measure_sampling(folders, log: Callable) -> dict:
    import numpy as np

    from pecn_ml.profiles import full_profile
    from pecn_ml.prompts import build_prompt
    from pecn_ml.sampling import load_pipeline, predict_batch, resolve_device_dtype
    from pecn_ml.training.autoencoder import roundtrip

    profile = full_profile()
    config = profile.sampling
    device, dtype = resolve_device_dtype(config)
    pipe = load_pipeline(folders.pix2pix, device, dtype)
    b, r = config.batch_size, profile.pix2pix_resolution
    frames = list(np.random.default_rng(0).integers(0, 256, (b, r, r, 3), dtype=np.uint8))
    prompts = [build_prompt("pushing something from left to right", 60)] * b

    def one_batch(steps: int) -> None:
        predict_batch(pipe, frames, prompts, list(range(b)), replace(config, num_inference_steps=steps))
        roundtrip(pipe.vae, np.stack(frames))   # the ceiling's and the latent copy's round trips
        roundtrip(pipe.vae, np.stack(frames))

    seconds = _timed(one_batch, 2, config.num_inference_steps)
    log(f"sampling: {b} samples x {config.num_inference_steps} steps in {seconds:.2f}s")
    return {"s_per_sample": seconds / b, "batch": b, "inference_steps": config.num_inference_steps,
            "dtype": str(dtype).replace("torch.", ""), "guidance_scale": config.guidance_scale,
            "image_guidance_scale": config.image_guidance_scale}


WORKERS = {"pix2pix": "ip2p_model", "pacnet": "pacnet", "sampling": "evaluation"}  # the asset each one times


def worker_main(args: argparse.Namespace) -> int:
    """One measurement (one rank of it under `accelerate launch`) into `{work}/rank-{r}.json`."""
    import torch

    from pecn_ml.rehearsal import model_folders
    from pecn_ml.utils.accel import process_rank

    rank, local, world = process_rank()
    torch.cuda.set_device(local)
    torch.backends.cuda.matmul.allow_tf32 = True
    work = Path(args.work)
    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    models = model_folders(args.models)
    if args.worker == "pix2pix":
        out = measure_pix2pix(models, work, args.steps, world, log)
    elif args.worker == "pacnet":
        out = measure_pacnet(models, work, world, log)
    else:
        out = measure_sampling(models, log)
    out.update(rank=rank, processes=world, gpu=torch.cuda.get_device_name(local),
               peak_gpu_bytes=int(torch.cuda.max_memory_allocated(local)),
               peak_gpu_reserved_bytes=int(torch.cuda.max_memory_reserved(local)))
    (work / f"rank-{rank}.json").write_text(json.dumps(out), encoding="utf-8")
    return 0


def _call_logged(command: Sequence[str], log_path: Path, what: str, done: Callable[[], bool]) -> float:
    """Run `command` with its output in `log_path`; its seconds, or RuntimeError with the log's tail."""
    from pecn_ml.utils.usage import log_tail, run_logged

    code, seconds, _ = run_logged(command, log_path)
    if code != 0 or not done():
        raise RuntimeError(f"{what} failed (exit {code}); last lines of {log_path}:\n{log_tail(log_path, 30)}")
    return seconds


def run_measurement(kind: str, processes: int, args: argparse.Namespace, work_root: Path) -> dict:
    """Start `kind` with `processes` ranks; rank 0's numbers with every rank's peak GPU memory."""
    from pecn_ml.utils.accel import launch_command

    work = work_root / f"{kind}-k{processes}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log_path = work_root / f"{kind}-k{processes}.log"
    command = launch_command(["-m", "pecn_ml.gpu_check", "--worker", kind, "--models", str(args.models),
                              "--work", str(work), "--steps", str(args.steps)], processes)
    wall = _call_logged(command, log_path, f"{kind} with {processes} process(es)",
                        lambda: any(work.glob("rank-*.json")))
    ranks = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(work.glob("rank-*.json"))]
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    main = next(r for r in ranks if r["rank"] == 0)
    return {**main, "wall_s": wall, "peak_gpu_bytes_per_rank": [r["peak_gpu_bytes"] for r in ranks],
            "log": str(log_path)}


def run_bench(work_root: Path) -> Optional[dict]:
    """`benchmarks/bench_pix2pix_gpu.py` at its defaults (None outside a checkout)."""
    if not BENCH.is_file():
        return None
    out, log_path = work_root / "bench_pix2pix_gpu.json", work_root / "bench_pix2pix_gpu.log"
    _call_logged([sys.executable, str(BENCH), "--json", str(out)], log_path, BENCH.name, out.is_file)
    return json.loads(out.read_text(encoding="utf-8"))


def measurement_line(name: str, m: dict) -> str:
    peaks = "/".join(f"{b / GIB:.1f}" for b in m["peak_gpu_bytes_per_rank"])
    rate = f"{m['s_per_step']:.3f} s/step, {m['samples_per_s']:.1f} samples/s (global batch {m['global_batch']})" \
        if "s_per_step" in m else f"{m['s_per_sample']:.3f} s/sample"
    return f"{name} K={m['processes']}: {rate}, peak GPU memory {peaks} GiB, {m['wall_s']:.0f}s in all"


def timings_from(measured: dict[str, dict], k: int) -> Timings:
    """The training steps measured with K = `k` processes; inference and sampling with one."""
    pix, pac = measured[f"pix2pix-k{k}"], measured[f"pacnet-k{k}"]
    return Timings(processes=k, pix2pix_s_per_step=pix["s_per_step"], pacnet_s_per_step=pac["s_per_step"],
                   pacnet_s_per_video=measured["pacnet-k1"]["s_per_video"],
                   eval_s_per_sample=measured["sampling-k1"]["s_per_sample"],
                   encode_s_per_frame=pix["encode_s_per_frame"])


def check(args: argparse.Namespace) -> int:
    import torch

    from pecn_ml.profiles import full_profile
    from pecn_ml.rehearsal import build_rehearsal_models
    from pecn_ml.utils.cuda import torch_build

    t_start = time.perf_counter()
    gpus = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    work_root = Path(args.work)
    work_root.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check: {torch_build()}; {gpus} GPU(s): {', '.join(names)}", flush=True)
    print(f"models: {args.models} (built once, random weights at real size)", flush=True)
    build_rehearsal_models(args.models, log=lambda line: print(f"  {line}", flush=True))

    measured: dict[str, dict] = {}
    for kind, name in WORKERS.items():
        measured[f"{kind}-k1"] = m = run_measurement(kind, 1, args, work_root)
        print(measurement_line(name, m), flush=True)
    bench = None if args.skip_bench else run_bench(work_root)
    if bench is None:
        print(f"bench_pix2pix_gpu: skipped ({'--skip-bench' if args.skip_bench else f'no {BENCH} here'})", flush=True)
    else:
        print(f"bench_pix2pix_gpu: ours {bench['ours']['steps_per_s']} vs reference {bench['reference']['steps_per_s']} "
              f"steps/s -> {bench['ratio']}x (batch {bench['batch']}, {bench['precision']}, {bench['resolution']} px; "
              f"peak {bench['ours']['peak_mem_GiB']} / {bench['reference']['peak_mem_GiB']} GiB)", flush=True)
    if gpus >= 2:
        for kind in ("pix2pix", "pacnet"):
            measured[f"{kind}-k2"] = m = run_measurement(kind, 2, args, work_root)
            print(measurement_line(WORKERS[kind], m) + " (NCCL)", flush=True)
    else:
        print("K=2 over NCCL: skipped (one GPU visible)", flush=True)

    pair = timings_from(measured, 2) if "pix2pix-k2" in measured else None
    experiment = Experiment.from_profile(full_profile(), args.train_videos, args.variants)
    plans = plans_for(gpus, args.gpus, timings_from(measured, 1), pair)
    print(f"\nProjected wall time of the full experiment ({describe_experiment(experiment)}), "
          f"phases one after another, at this machine's per-GPU speed:")
    print(projection_table(experiment, plans))
    total = time.perf_counter() - t_start
    print(f"gpu-check: done in {total:.0f}s")
    report = {"machine": {"gpus": names, "torch": torch_build(), "python": platform.python_version(),
                          "host": platform.node()},
              "measured": measured, "bench_pix2pix_gpu": bench, "experiment": asdict(experiment),
              "projection": [{"gpus": n, "processes": t.processes, **project(experiment, t, n)} for n, t in plans],
              "wall_s": round(total, 1)}
    path = work_root / "gpu_check.json"
    path.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"report: {path}")
    return 0


def _gpu_counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="The real-size models on this machine's GPU(s), and the full experiment's projected time.")
    parser.add_argument("--models", default="outputs/rehearsal_models", help="the rehearsal's model folders")
    parser.add_argument("--work", default="outputs/gpu_check", help="scratch space, logs and the report")
    parser.add_argument("--steps", type=int, default=6, help="InstructPix2Pix optimizer steps per run")
    parser.add_argument("--train-videos", type=int, default=None,
                        help="the filtered training set's size (default: the full profile's 2,000 per task)")
    parser.add_argument("--variants", type=int, default=4, help="variants trained and evaluated (the seed's 4)")
    parser.add_argument("--gpus", type=_gpu_counts, default=[4, 8],
                        help="GPU counts to project besides 1 and the visible ones (default 4,8; '' for none)")
    parser.add_argument("--skip-bench", action="store_true", help="leave out benchmarks/bench_pix2pix_gpu.py")
    parser.add_argument("--keep", action="store_true", help="keep the trained folders under --work")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)   # internal: one measurement
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is a warm-up)")
    import torch

    from pecn_ml.utils.cuda import why_no_cuda

    if not torch.cuda.is_available():  # one line saying why, and a clear exit status
        print(f"gpu-check: no CUDA GPU visible, nothing to measure: {why_no_cuda()}", flush=True)
        return EXIT_NO_CUDA
    if args.worker:
        return worker_main(args)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
