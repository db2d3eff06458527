"""Training in a launched process: the child side of Dagster Pipes.

    python -m pecn_assets.pipes_child pix2pix|pacnet|check --config JSON   (or --config @job.json)

The JSON is a `Pix2PixJob` / `PacNetJob` (below): the asset's typed inputs as artifact JSON
(`pecn_ml.artifacts`: annotations, frame cache, base weights; verified by sha again here), the
trainer's config as a dict, the output folder and launch options. The child rebuilds the datasets
and configs, calls `pecn_ml.training.pix2pix.train_pix2pix` / `pecn_ml.training.pacnet.train_pacnet`,
and reports the checkpoint's artifact (metadata key `artifact`) with the run's numbers through
`report_asset_materialization`; the asset returns that artifact. `check` trains nothing: it
tests a K-process launch (all-reduce + one data-parallel step).

Started by `accelerate launch` / `torchrun` with K processes, every rank inherits the Pipes
environment; only rank 0 (env `RANK`) opens Pipes, logs through it and reports, so one writer
uses the message channel. The other ranks log to stderr (the step's compute log) and leave a
small record (`rank-{r}.json` under `{out_dir}/.pipes_ranks/{launch_id}/`) that rank 0 waits for
and reports as `ranks`: evidence that every rank trained.

Every rank dies with the step that launched it (`pecn_ml.utils.processes.die_with` on the step's
pid, which the launcher passes as `PECN_LAUNCHER_PID` / `PECN_LAUNCHER_START`): a killed step
leaves no orphan training on its devices. A failure a retry cannot fix (a full disk, a failed
sha256 verification; `pecn_ml.utils.failures`) is announced on stderr so the step is not retried.

This module imports `dagster_pipes`, never `dagster` (the launching side is `pipes_launch.py`).
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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional

from pecn_ml.utils.cuda import require_cuda
from pecn_ml.utils.failures import NOT_RETRIED_MARKER, permanent_reason
from pecn_ml.utils.processes import die_with
from pecn_ml.utils.usage import bytes_on_disk, prune_training_state, safetensors_parameters, usage_metadata

TRAINERS = ("pix2pix", "pacnet", "check")
RANKS_DIR = ".pipes_ranks"
LAUNCHER_PID_ENV = "PECN_LAUNCHER_PID"      # the step process that launched this child ...
LAUNCHER_START_ENV = "PECN_LAUNCHER_START"  # ... and when it started (pecn_ml.utils.processes.start_ticks)
SELECTION_SPLIT = "selection_split.json"   # PAC-Net's selection split, in its run folder
LogFn = Callable[[str], None]


def _from_dict(cls: type, data: dict, what: str) -> Any:
    """`cls(**data)` with a clear error for unknown or missing fields."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what}: unknown {cls.__name__} fields {unknown}")
    return cls(**data)


@dataclass(frozen=True)
class LaunchOptions:
    """What every job shares: the output folder, resuming, the GPU check, pruning."""

    out_dir: str
    resume: Any = True                  # bool, or "auto" (PAC-Net)
    require_cuda: bool = False          # the full profile: fail at once without a GPU ...
    allow_cpu: bool = False             # ... unless the CPU was explicitly allowed
    prune_training_state: bool = False  # remove optimizer state after the final save
    launch_id: str = ""                 # names this launch's rank records


@dataclass(frozen=True)
class Pix2PixJob:
    """One InstructPix2Pix fine-tuning of one variant and training seed. The inputs are the asset's
    artifact handles as JSON (`pecn_ml.artifacts`), checked by sha again in the child."""

    annotations: dict                    # FilteredAnnotations.to_json()
    frame_cache: dict                    # FrameCacheRef.to_json() (the profile's pix2pix resolution)
    base: dict                           # Weights.to_json() of pix2pix_base
    variant: str                         # pecn_ml.variants.VARIANTS key
    seed: int                            # the training seed (the partition's)
    train_config: dict                   # Pix2PixTrainConfig fields
    options: dict                        # LaunchOptions fields
    run_id: str = ""                     # the Dagster run (recorded in the checkpoint handle)
    prompt_text: str = "class"
    progress_estimates: Optional[dict] = None   # video id -> percent (PAC-Net); None: frame count
    progress_source: str = "none"        # what the prompts' percentages come from
    tracking: Optional[dict] = None      # TrackingConfig fields; None: TensorBoard in out_dir
    card: Optional[dict] = None          # model_cards.CardContext.to_dict(): what the model card adds


@dataclass(frozen=True)
class PacNetJob:
    """One PAC-Net training of one head: trained on the training split less its selection split, the
    best epoch picked on the selection split, the chosen model scored on both eval sets (test)."""

    annotations: dict                    # FilteredAnnotations.to_json()
    frame_cache: dict                    # FrameCacheRef.to_json() (the profile's pacnet resolution)
    head: str                            # "regression" | "classification"
    model_config: dict                   # PacNetConfig fields
    train_config: dict                   # PacNetTrainConfig fields
    options: dict                        # LaunchOptions fields
    run_id: str = ""
    tracking: Optional[dict] = None
    card: Optional[dict] = None          # model_cards.CardContext.to_dict()


@dataclass(frozen=True)
class CheckJob:
    """A launch check without a model: every rank makes an Accelerator, the ranks sum their
    numbers (all-reduce) and take one data-parallel step on a 4-weight model. Run it with the
    step's K and devices to see that a K-process launch works before hours of training.
    `hold_s`: then keep the launch (and its devices) this long, to see what stops a running launch
    (an interrupted step, a killed one)."""

    options: dict = field(default_factory=dict)
    hold_s: float = 0.0


JOBS = {"pix2pix": Pix2PixJob, "pacnet": PacNetJob, "check": CheckJob}


def job_to_json(job: Any) -> str:
    return json.dumps(asdict(job), sort_keys=True, default=str)


def job_from_json(trainer: str, text: str) -> Any:
    if trainer not in JOBS:
        raise ValueError(f"unknown trainer {trainer!r}; choose one of {TRAINERS}")
    return _from_dict(JOBS[trainer], json.loads(text), f"{trainer} job")


# --- ranks ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_rank(environ: Optional[dict] = None) -> Rank:
    """This process's rank from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, as set by
    torchrun and accelerate launch); a plain process is rank 0 of 1."""
    env = os.environ if environ is None else environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        return f"cuda:{i} ({torch.cuda.get_device_name(i)})"
    return "cpu"


def _rank_dir(options: LaunchOptions) -> Path:
    return Path(options.out_dir) / RANKS_DIR / (options.launch_id or "default")


def write_rank_record(options: LaunchOptions, rank: Rank, record: dict) -> None:
    path = _rank_dir(options) / f"rank-{rank.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, default=str), encoding="utf-8")
    os.replace(tmp, path)


def gather_rank_records(options: LaunchOptions, rank: Rank, own: dict, timeout_s: float = 300.0,
                        log: Optional[LogFn] = None) -> list[dict]:
    """Rank 0: its own record plus the other ranks' files (waiting for them), then cleans up."""
    folder = _rank_dir(options)
    want = [folder / f"rank-{r}.json" for r in range(1, rank.world_size)]
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


# --- the two trainers ------------------------------------------------------------------------------

def _options(job: Any) -> LaunchOptions:
    return _from_dict(LaunchOptions, job.options, "launch options")


def _tracking(job: Any):
    from pecn_ml.training.tracking import TrackingConfig

    return _from_dict(TrackingConfig, job.tracking, "tracking") if job.tracking is not None else None


def _artifact(data: dict, cls: type) -> Any:
    """An input handle of the job, checked against its recorded sha256 (the files may have
    changed between the step and its child)."""
    from pecn_ml.artifacts import artifact_from_json

    artifact = artifact_from_json(data)
    if not isinstance(artifact, cls):
        raise ValueError(f"expected a {cls.__name__} handle, got {type(artifact).__name__}")
    return artifact.verify()


def _card(job: Any, **data_versions: str):
    """The job's model card context (with `data_versions` added); None where the job carries none."""
    from pecn_ml.model_cards import CardContext

    if job.card is None:
        return None
    context = CardContext.from_dict(job.card)
    return replace(context, data_versions={**context.data_versions, **data_versions})


def run_pix2pix(job: Pix2PixJob, log: LogFn) -> tuple[dict, str]:
    """Train; return (metadata with the `artifact` handle, data version = the checkpoint's manifest sha256)."""
    from pecn_ml.artifacts import FilteredAnnotations, FrameCacheRef, Pix2PixCheckpoint, UNET_WEIGHTS, Weights
    from pecn_ml.data.pairs import FramePairDataset
    from pecn_ml.training.pix2pix import Pix2PixTrainConfig, train_pix2pix
    from pecn_ml.variants import VARIANTS

    opts = _options(job)
    config = _from_dict(Pix2PixTrainConfig, job.train_config, "pix2pix train_config")
    annotations = _artifact(job.annotations, FilteredAnnotations)
    cache = _artifact(job.frame_cache, FrameCacheRef).open()
    base = _artifact(job.base, Weights)
    variant = VARIANTS[job.variant]

    def pairs(entries: list[dict]) -> FramePairDataset:
        return FramePairDataset(cache, entries, input_idx=variant.input_idx, target_idx=variant.target_idx,
                                add_progress=variant.add_progress, progress_estimates=job.progress_estimates,
                                prompt_text=job.prompt_text, shuffle_seed=variant.shuffle_seed)

    train, val = pairs(annotations.train()), pairs(annotations.eval_set("basic"))
    result = train_pix2pix(base.path, train, config, opts.out_dir, val_dataset=val, log=log,
                           resume=bool(opts.resume), tracking=_tracking(job), card=_card(job))
    checkpoint = Pix2PixCheckpoint.from_result(result, job.variant, job.seed, Path(opts.out_dir), job.run_id,
                                               base.sha256, job.progress_source)
    meta = {
        "artifact": checkpoint.to_json(),
        "train_pairs": len(train),
        "skipped": {k: len(v) for k, v in train.skipped.items()},
        "loss_values": [round(float(x), 5) for x in result.loss_curve],
        "loss_curve_png": str(result.loss_curve_png),
        "validation_grid_png": str(result.validation_grid) if result.validation_grid else "",
        "latent_cache": result.latent_cache,
        "resumed_from_step": result.resumed_from_step,
        "train_seconds": result.seconds,
        "seconds_per_step": round(result.seconds_per_step, 4),   # optimizer steps alone
        "per_process_batch_size": config.train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "parameters": safetensors_parameters(Path(result.model_dir) / UNET_WEIGHTS),
        "model_bytes_on_disk": bytes_on_disk(result.model_dir),
    }
    return meta, result.checkpoint_sha256


def run_pacnet(job: PacNetJob, log: LogFn) -> tuple[dict, str]:
    """Train; return (metadata with the `artifact` handle, data version = the best checkpoint's manifest sha256)."""
    from pecn_ml.artifacts import PACNET_WEIGHTS, FilteredAnnotations, FrameCacheRef, PacNetCheckpoint
    from pecn_ml.models.pacnet import PacNetConfig
    from pecn_ml.training.pacnet import PacNetTrainConfig, pacnet_splits, train_pacnet
    from pecn_ml.utils.files import sha256_json, write_json_atomic

    opts = _options(job)
    model_config = PacNetConfig.from_dict(job.model_config, "pacnet model_config")
    config = _from_dict(PacNetTrainConfig, job.train_config, "pacnet train_config")
    annotations = _artifact(job.annotations, FilteredAnnotations)
    cache = _artifact(job.frame_cache, FrameCacheRef).open()
    # the best epoch is picked on training videos held out, never on the evaluation videos
    splits = pacnet_splits(annotations.train(), annotations.all_eval_sets(), config)
    split_file = Path(opts.out_dir) / SELECTION_SPLIT
    if current_rank().is_main:
        write_json_atomic(split_file, splits.to_json())
    log(f"pacnet: selection split of {len(splits.selection)} training videos ({splits.to_json()['per_task']}), "
        f"{len(splits.train)} left to train on, {len(splits.test)} evaluation videos as the test set: {split_file}")
    result = train_pacnet(model_config, config, cache, splits.train, splits.selection, opts.out_dir, log=log,
                          resume=opts.resume, tracking=_tracking(job), test_entries=splits.test,
                          card=_card(job, selection_split_ids=sha256_json([e["id"] for e in splits.selection])))
    checkpoint = PacNetCheckpoint.from_result(result, job.head, Path(opts.out_dir), job.run_id, split_file)
    history = [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in result.history]
    # this call's epochs (a resumed run counts only what it trained), validation included: an
    # upper bound of the optimizer step's time
    trained = [h for h in result.history if int(h.get("epoch", 0)) > result.resumed_from_epoch]
    seconds = sum(float(h.get("seconds", 0.0)) for h in trained)
    steps = len(trained) * math.ceil(result.num_train / (config.batch_size * current_rank().world_size))
    meta = {
        "artifact": checkpoint.to_json(),
        "history": history, "num_train": result.num_train,
        "resumed_from_epoch": result.resumed_from_epoch,
        "per_process_batch_size": config.batch_size,
        "gradient_accumulation_steps": 1,
        "parameters": safetensors_parameters(Path(result.best_dir) / PACNET_WEIGHTS),
        "model_bytes_on_disk": bytes_on_disk(result.best_dir),
        "train_seconds": round(seconds, 3),
        **({"optimizer_steps": steps, "seconds_per_step": round(seconds / steps, 4)} if steps else {}),
    }
    return meta, result.checkpoint_sha256


def run_check(job: CheckJob, log: LogFn) -> tuple[dict, str]:
    """All-reduce of the ranks' numbers and one DDP step; the weights must agree afterwards."""
    import torch

    from pecn_ml.utils.accel import make_accelerator

    accelerator = make_accelerator()
    n, rank = accelerator.num_processes, accelerator.process_index
    total = accelerator.reduce(torch.tensor([rank + 1.0], device=accelerator.device), "sum")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    x = torch.full((2, 4), float(rank + 1), device=accelerator.device)  # different data per rank
    accelerator.backward(model(x).pow(2).mean())
    optimizer.step()
    weights = accelerator.unwrap_model(model).weight.detach().reshape(1, -1)
    gathered = accelerator.gather(weights)                             # (n, 4)
    agree = bool(torch.allclose(gathered, gathered[:1].expand_as(gathered)))
    log(f"check: rank {rank}/{n} on {accelerator.device}, {accelerator.distributed_type}, "
        f"all-reduce sum {float(total):g}, weights agree: {agree}")
    meta = {"reduce_sum": float(total), "expected_sum": n * (n + 1) / 2,
            "weights_agree": agree, "distributed_type": str(accelerator.distributed_type),
            "backend": str(accelerator.state.backend), "device": str(accelerator.device)}
    accelerator.end_training()
    if job.hold_s > 0:
        log(f"check: rank {rank} holds the launch for {job.hold_s:g}s")
        time.sleep(job.hold_s)
    return meta, f"check-{n}"


RUNNERS: dict[str, Callable[[Any, LogFn], tuple[dict, str]]] = {
    "pix2pix": run_pix2pix, "pacnet": run_pacnet, "check": run_check}


# --- main ------------------------------------------------------------------------------------------

def train(trainer: str, job: Any, log: LogFn, rank: Rank) -> tuple[dict, str]:
    """Everything a rank does: GPU check, training, and (rank 0) pruning, sizes and usage."""
    opts = _options(job)
    device = require_cuda(opts.allow_cpu, f"{trainer} training") if opts.require_cuda else None
    t0 = time.perf_counter()
    meta, version = RUNNERS[trainer](job, log)
    meta["child_seconds"] = round(time.perf_counter() - t0, 3)
    if device is not None:
        meta["device_check"] = device
    if rank.is_main and trainer != "check":
        if opts.prune_training_state:
            meta.update(prune_training_state(opts.out_dir, log=log).metadata())
        meta["bytes_on_disk"] = bytes_on_disk(opts.out_dir)
    meta.update(usage_metadata())
    return meta, version


def _rank_record(rank: Rank, meta: dict) -> dict:
    return {"rank": rank.rank, "local_rank": rank.local_rank, "pid": os.getpid(),
            "host": socket.gethostname(), "device": _device_name(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "peak_rss_bytes": meta.get("peak_rss_bytes"), "cuda_peak_bytes": meta.get("cuda_peak_bytes")}


def pipes_metadata(meta: dict) -> dict:
    """Metadata in Pipes' form: dicts and lists as JSON values, `{raw_value, type}` entries kept."""
    out = {}
    for key, value in meta.items():
        typed = isinstance(value, dict) and set(value) == {"raw_value", "type"}
        out[key] = value if typed or not isinstance(value, (dict, list, tuple)) else {
            "raw_value": json.loads(json.dumps(value, default=str)), "type": "json"}
    return out


def _parse(argv: Optional[list[str]]) -> tuple[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m pecn_assets.pipes_child",
                                     description="Train one model as a Dagster Pipes child.")
    parser.add_argument("trainer", choices=TRAINERS)
    parser.add_argument("--config", required=True, help="the job as JSON, or @path of a JSON file")
    args, _ = parser.parse_known_args(argv)  # Pipes may append its own --dagster-pipes-* args
    text = args.config
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    return args.trainer, job_from_json(args.trainer, text)


def _die_with_launcher() -> None:
    """Stop when the step that launched this child dies (no-op when not launched by a step)."""
    pid = os.environ.get(LAUNCHER_PID_ENV, "")
    if pid.isdigit():
        die_with(int(pid), os.environ.get(LAUNCHER_START_ENV, ""),
                 log=lambda msg: print(f"[pipes child] {msg}", file=sys.stderr, flush=True))


def main(argv: Optional[list[str]] = None) -> int:
    _die_with_launcher()
    trainer, job = _parse(argv)
    try:
        return _main(trainer, job)
    except Exception as e:
        reason = permanent_reason(e)
        if reason is not None:
            print(f"{NOT_RETRIED_MARKER} {reason}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise


def _main(trainer: str, job: Any) -> int:
    rank = current_rank()
    opts = _options(job)
    if not rank.is_main:
        def log(msg: str) -> None:
            print(f"[rank {rank.rank}/{rank.world_size}] {msg}", file=sys.stderr, flush=True)

        meta, _ = train(trainer, job, log, rank)
        write_rank_record(opts, rank, _rank_record(rank, meta))
        return 0

    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        log = pipes.log.info
        log(f"{trainer}: rank 0 of {rank.world_size} process(es), "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}")
        meta, version = train(trainer, job, log, rank)
        ranks = gather_rank_records(opts, rank, _rank_record(rank, meta), log=log)
        meta.update(num_processes=rank.world_size, ranks=ranks)
        if "per_process_batch_size" in meta:  # samples per optimizer step, all ranks together
            meta["global_batch_size"] = (meta["per_process_batch_size"] * meta["gradient_accumulation_steps"]
                                         * rank.world_size)
        pipes.report_asset_materialization(metadata=pipes_metadata(meta), data_version=version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
