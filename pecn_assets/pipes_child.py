"""Training in a launched process, the child side of Dagster Pipes (the launcher: `pipes_launch.py`).

    python -m pecn_assets.pipes_child pix2pix|pacnet --config @job.json

The job (`Pix2PixJob` / `PacNetJob`, JSON through `pecn_ml.utils.codec`) carries the input handles
as the I/O manager loaded and verified them, the trainer's config and the launch options. Rank 0
alone opens Pipes and reports the checkpoint's handle (metadata `artifact`); the other ranks log to
stderr and leave a record that rank 0 reports as `ranks`. Imports `dagster_pipes`, never `dagster`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Union

import torch

from pecn_ml.artifacts import (PACNET_WEIGHTS, UNET_WEIGHTS, FilteredAnnotations, FrameCacheRef, PacNetCheckpoint,
                               Pix2PixCheckpoint, Weights)
from pecn_ml.data.pairs import FramePairDataset
from pecn_ml.model_cards import CardContext
from pecn_ml.models.pacnet import PacNetConfig
from pecn_ml.training.pacnet import PacNetTrainConfig, pacnet_splits, train_pacnet
from pecn_ml.training.pix2pix import Pix2PixTrainConfig, train_pix2pix
from pecn_ml.training.scaffold import prune_training_state
from pecn_ml.training.tracking import TrackingConfig
from pecn_ml.utils.accel import process_rank
from pecn_ml.utils.codec import from_json
from pecn_ml.utils.cuda import require_cuda
from pecn_ml.utils.failures import NOT_RETRIED_MARKER, permanent_reason
from pecn_ml.utils.files import sha256_json, write_json_atomic
from pecn_ml.utils.processes import die_with
from pecn_ml.utils.usage import bytes_on_disk, safetensors_parameters, usage_metadata
from pecn_ml.variants import VARIANTS

RANKS_DIR = ".pipes_ranks"
SELECTION_SPLIT = "selection_split.json"   # PAC-Net's selection split, in its run folder
LogFn = Callable[[str], None]
Runner = Callable[[Any, LogFn], dict]   # job, log -> metadata (with the `artifact` handle, if any)


@dataclass(frozen=True)
class LaunchOptions:
    """What every job shares: the output folder, resuming, the GPU check, pruning, the launch."""

    out_dir: str
    resume: Union[bool, Literal["auto"]] = True   # "auto": PAC-Net's
    require_cuda: bool = False          # the full profile: fail at once without a GPU ...
    allow_cpu: bool = False             # ... unless the CPU was explicitly allowed
    prune_training_state: bool = False  # remove optimizer state after the final save
    launch_id: str = ""                 # names this launch's rank records
    launcher_pid: int = 0               # the step that launched the child (every rank dies with it); 0: none
    launcher_start: str = ""            # and when it started (pecn_ml.utils.processes.start_ticks)


@dataclass(frozen=True)
class Pix2PixJob:
    """One InstructPix2Pix fine-tuning of one variant and training seed."""

    annotations: FilteredAnnotations
    frame_cache: FrameCacheRef           # at the profile's pix2pix resolution
    base: Weights                        # pix2pix_base
    variant: str                         # pecn_ml.variants.VARIANTS key
    seed: int                            # the training seed (the partition's)
    train_config: Pix2PixTrainConfig
    options: LaunchOptions
    run_id: str = ""                     # the Dagster run (recorded in the checkpoint handle)
    prompt_text: str = "class"
    progress_estimates: Optional[Mapping[str, int]] = None   # video id -> percent (PAC-Net); None: frame count
    progress_source: str = "none"        # what the prompts' percentages come from
    tracking: Optional[TrackingConfig] = None   # None: TensorBoard in out_dir
    card: Optional[CardContext] = None


@dataclass(frozen=True)
class PacNetJob:
    """One PAC-Net training of one head (`model_config.head`)."""

    annotations: FilteredAnnotations
    frame_cache: FrameCacheRef           # at the profile's pacnet resolution
    model_config: PacNetConfig
    train_config: PacNetTrainConfig
    options: LaunchOptions
    run_id: str = ""
    tracking: Optional[TrackingConfig] = None
    card: Optional[CardContext] = None


def _rank_dir(options: LaunchOptions) -> Path:
    return Path(options.out_dir) / RANKS_DIR / (options.launch_id or "default")


def gather_rank_records(options: LaunchOptions, world_size: int, own: dict, timeout_s: float = 300.0,
                        log: Optional[LogFn] = None) -> list[dict]:
    """Rank 0: its own record plus the other ranks' files (waiting for them), then cleans up."""
    folder = _rank_dir(options)
    want = [folder / f"rank-{r}.json" for r in range(1, world_size)]
    t0 = time.monotonic()
    while not all(p.is_file() for p in want) and time.monotonic() - t0 < timeout_s:
        time.sleep(0.2)
    records = [own]
    for p in want:
        if p.is_file():
            records.append(json.loads(p.read_text(encoding="utf-8")))
        elif log is not None:
            log(f"rank record {p.name} missing after {timeout_s:.0f}s")
    shutil.rmtree(folder, ignore_errors=True)
    return records


def _rank_record(meta: dict) -> dict:
    rank, local_rank, _ = process_rank()
    cuda = torch.cuda.is_available()
    device = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})" if cuda else "cpu"
    return {"rank": rank, "local_rank": local_rank, "pid": os.getpid(), "host": socket.gethostname(),
            "device": device, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "peak_rss_bytes": meta.get("peak_rss_bytes"), "cuda_peak_bytes": meta.get("cuda_peak_bytes")}


def run_pix2pix(job: Pix2PixJob, log: LogFn) -> dict:
    """Train; return the metadata with the checkpoint's `artifact` handle."""
    opts, config, variant, cache = job.options, job.train_config, VARIANTS[job.variant], job.frame_cache.open()

    def pairs(entries: list[dict]) -> FramePairDataset:
        return FramePairDataset(cache, entries, input_idx=variant.input_idx, target_idx=variant.target_idx,
                                add_progress=variant.add_progress, progress_estimates=job.progress_estimates,
                                prompt_text=job.prompt_text, shuffle_seed=variant.shuffle_seed)

    train, val = pairs(job.annotations.train()), pairs(job.annotations.eval_set("basic"))
    result = train_pix2pix(job.base.path, train, config, opts.out_dir, val_dataset=val, log=log,
                           resume=bool(opts.resume), tracking=job.tracking, card=job.card)
    checkpoint = Pix2PixCheckpoint.from_result(result, job.variant, job.seed, Path(opts.out_dir), job.run_id,
                                               job.base.sha256, job.progress_source)
    meta = {
        "artifact": checkpoint.to_json(), "train_pairs": len(train),
        "skipped": {k: len(v) for k, v in train.skipped.items()},
        "loss_values": [round(float(x), 5) for x in result.loss_curve], "loss_curve_png": str(result.loss_curve_png),
        "validation_grid_png": str(result.validation_grid or ""), "latent_cache": result.latent_cache,
        "resumed_from_step": result.resumed_from_step, "train_seconds": result.seconds,
        "seconds_per_step": round(result.seconds_per_step, 4),   # optimizer steps alone
        "per_process_batch_size": config.train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "parameters": safetensors_parameters(Path(result.model_dir) / UNET_WEIGHTS),
        "model_bytes_on_disk": bytes_on_disk(result.model_dir)}
    return meta


def run_pacnet(job: PacNetJob, log: LogFn) -> dict:
    """Train; return the metadata with the best checkpoint's `artifact` handle."""
    opts, config = job.options, job.train_config
    rank, _, world_size = process_rank()
    # the best epoch is picked on training videos held out, never on the evaluation videos
    splits = pacnet_splits(job.annotations.train(), job.annotations.all_eval_sets(), config)
    split_file = Path(opts.out_dir) / SELECTION_SPLIT
    if rank == 0:
        write_json_atomic(split_file, splits.to_json())
    log(f"pacnet: selection split of {len(splits.selection)} training videos ({splits.to_json()['per_task']}), "
        f"{len(splits.train)} left to train on, {len(splits.test)} evaluation videos as the test set: {split_file}")
    card = job.card and replace(job.card, data_versions={
        **job.card.data_versions, "selection_split_ids": sha256_json([e["id"] for e in splits.selection])})
    result = train_pacnet(job.model_config, config, job.frame_cache.open(), splits.train, splits.selection,
                          opts.out_dir, log=log, resume=opts.resume, tracking=job.tracking, test_entries=splits.test,
                          card=card)
    checkpoint = PacNetCheckpoint.from_result(result, job.model_config.head, Path(opts.out_dir), job.run_id, split_file)
    history = [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in result.history]
    # this call's epochs (a resumed run counts only what it trained), validation included: an
    # upper bound of the optimizer step's time
    trained = [h for h in result.history if int(h.get("epoch", 0)) > result.resumed_from_epoch]
    seconds = sum(float(h.get("seconds", 0.0)) for h in trained)
    steps = len(trained) * math.ceil(result.num_train / (config.batch_size * world_size))
    meta = {
        "artifact": checkpoint.to_json(), "history": history, "num_train": result.num_train,
        "resumed_from_epoch": result.resumed_from_epoch, "per_process_batch_size": config.batch_size,
        "gradient_accumulation_steps": 1, "parameters": safetensors_parameters(Path(result.best_dir) / PACNET_WEIGHTS),
        "model_bytes_on_disk": bytes_on_disk(result.best_dir), "train_seconds": round(seconds, 3),
        **({"optimizer_steps": steps, "seconds_per_step": round(seconds / steps, 4)} if steps else {})}
    return meta


TRAINERS: dict[str, tuple[type, Runner]] = {"pix2pix": (Pix2PixJob, run_pix2pix), "pacnet": (PacNetJob, run_pacnet)}


def train(trainer: str, job: Any, runner: Runner, log: LogFn, main_rank: bool) -> dict:
    """Everything a rank does: GPU check, training, and (rank 0) pruning, sizes and usage."""
    opts = job.options
    device = require_cuda(opts.allow_cpu, f"{trainer} training") if opts.require_cuda else None
    t0 = time.perf_counter()
    meta = runner(job, log)
    meta["child_seconds"] = round(time.perf_counter() - t0, 3)
    if device is not None:
        meta["device_check"] = device
    if main_rank and opts.prune_training_state:
        meta.update(prune_training_state(opts.out_dir, log=log).metadata())
    if main_rank and Path(opts.out_dir).is_dir():
        meta["bytes_on_disk"] = bytes_on_disk(opts.out_dir)
    meta.update(usage_metadata())
    return meta


def pipes_metadata(meta: dict) -> dict:
    """Metadata in Pipes' form: dicts and lists as JSON values, `{raw_value, type}` entries kept."""
    out = {}
    for key, value in meta.items():
        typed = isinstance(value, dict) and set(value) == {"raw_value", "type"}
        out[key] = value if typed or not isinstance(value, (dict, list, tuple)) else {
            "raw_value": json.loads(json.dumps(value, default=str)), "type": "json"}
    return out


def main(argv: Optional[list[str]] = None, trainers: Mapping[str, tuple[type, Runner]] = TRAINERS) -> int:
    """Run the job of `argv` with the trainer it names; a failure no retry can fix is announced on stderr."""
    parser = argparse.ArgumentParser(description="Train one model as a Dagster Pipes child.")
    parser.add_argument("trainer", choices=sorted(trainers))
    parser.add_argument("--config", required=True, help="the job as JSON, or @path of a JSON file")
    args, _ = parser.parse_known_args(argv)  # Pipes may append its own --dagster-pipes-* args
    trainer, text = args.trainer, args.config
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    job = from_json(trainers[trainer][0], text)
    if job.options.launcher_pid:  # a killed step leaves no orphan training on its devices
        die_with(job.options.launcher_pid, job.options.launcher_start,
                 log=lambda msg: print(f"[pipes child] {msg}", file=sys.stderr, flush=True))
    try:
        return _main(trainer, job, trainers[trainer][1])
    except Exception as e:
        reason = permanent_reason(e)
        if reason is not None:
            print(f"{NOT_RETRIED_MARKER} {reason}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise


def _main(trainer: str, job: Any, runner: Runner) -> int:
    rank, _, world_size = process_rank()
    if rank != 0:
        def log(msg: str) -> None:
            print(f"[rank {rank}/{world_size}] {msg}", file=sys.stderr, flush=True)

        meta = train(trainer, job, runner, log, main_rank=False)
        write_json_atomic(_rank_dir(job.options) / f"rank-{rank}.json", _rank_record(meta))
        return 0

    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        log = pipes.log.info
        log(f"{trainer}: rank 0 of {world_size} process(es), "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}")
        meta = train(trainer, job, runner, log, main_rank=True)
        ranks = gather_rank_records(job.options, world_size, _rank_record(meta), log=log)
        meta.update(num_processes=world_size, ranks=ranks)
        if "per_process_batch_size" in meta:  # samples per optimizer step, all ranks together
            meta["global_batch_size"] = (meta["per_process_batch_size"] * meta["gradient_accumulation_steps"]
                                         * world_size)
        version = meta["artifact"]["sha256"] if "artifact" in meta else None   # the checkpoint's manifest sha256
        pipes.report_asset_materialization(metadata=pipes_metadata(meta), data_version=version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
