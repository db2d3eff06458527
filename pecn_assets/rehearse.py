"""`make rehearse`: the real run's code path and model sizes, without the hub, on a handful of videos.

    python -m pecn_assets.rehearse [--keep] [--dagster-home DIR] [--models DIR] [--only STEP ...]

1. builds the real architectures with random weights once (`pecn_ml.rehearsal`, reused when
   complete) and writes the `rehearsal` profile's synthetic videos (reused when unchanged);
2. materialises every asset and partition of `build_definitions(rehearsal_profile(), models=<the
   local folders>)`, in dependency order, into a throwaway DAGSTER_HOME
   (`outputs/rehearsal/_dagster_home-*`, removed at the end unless `--keep`);
3. prints one line per step and a table at the end (also `outputs/rehearsal/rehearsal_report.json`):
   status, wall seconds, parameters, peak RSS, GPU peak, seconds per optimizer step, bytes written.

Every step runs in its own process (`python -m pecn_assets.rehearse --step STEP [--partition K]`),
so its peak RSS is its own: the parent reads it from `os.wait4`, whose `ru_maxrss` covers the step
process and the descendants it waited for (the training child that `ip2p_model` and `pacnet`
launch through Dagster Pipes); the step also reports max(itself, its children) and its training
child's own peak from the metadata, and the largest is shown. Parameters come from the
materialisation's `parameters` metadata when the asset records it, else from the safetensors
headers of the files its handle names (the `source` column says which). Bytes written: the
profile's data, outputs and results folders (and the models folder) before vs after the step.

Without CUDA the run is made to fit the machine by `cpu_adjustments` (batch sizes, gradient
checkpointing by a memory estimate; never a model size), which prints what it changed, and the
step processes get PECN_ALLOW_CPU=1 (the full profile's GPU steps fail at once without it).
Each rehearsal starts from empty outputs/results folders and no frame cache, so every step does
its work; the models and the synthetic videos are reused. (`--only` clears nothing first; the
end of a run without `--keep` removes everything under outputs/rehearsal but the report and logs.)

Measured on the 2-core, 24 GiB machine without a GPU (shared with other test runs), models and
videos already built: 28 min; every ip2p_model step 2.3-3.9 min at a peak RSS of 14.6 GiB (the
estimate above: 14.3 GiB), each evaluation about 3 min, PAC-Net under a minute per head. Building
the models the first time adds 38 s (4.4 GiB peak, 4.6 GB on disk).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

MODELS_DIR = "outputs/rehearsal_models"
REPORT_NAME = "rehearsal_report.json"
LOGS_DIR = "_rehearse_logs"
LOCK_NAME = "_rehearse.lock"  # one rehearsal at a time per outputs folder
HOME_PREFIX = "_dagster_home-"
# Steps before the asset graph, each in its own process like the assets.
MODELS_STEP, DATA_STEP, OBSERVE_STEP = "rehearsal_models", "synthetic_data", "observe_sources"
SETUP_STEPS = (MODELS_STEP, DATA_STEP, OBSERVE_STEP)
LOG_TAIL_LINES = 40
GIB = 2 ** 30

# The memory estimate that decides gradient checkpointing on the CPU: fp32 UNet weights, their
# gradients and AdamW's two moments (16 bytes per parameter), the frozen VAE and text encoder
# twice (training, and the pipeline built for the final save: 8 bytes per parameter), plus room
# for activations, the runtime and the rest of the machine.
UNET_TRAIN_BYTES_PER_PARAM = 16
FROZEN_BYTES_PER_PARAM = 8
HEADROOM_BYTES = 8 * GIB

LogFn = Callable[[str], None]


# --- the CPU adjustments ----------------------------------------------------------------------------

def total_memory_bytes() -> int:
    """Physical memory of the machine (stable between the parent and its step processes)."""
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def unet_training_bytes(counts: Optional[dict[str, int]] = None) -> int:
    """Estimated bytes of an InstructPix2Pix fine-tuning step without activations (see above)."""
    if counts is None:
        from pecn_ml.rehearsal import rehearsal_param_counts

        counts = rehearsal_param_counts()
    return (UNET_TRAIN_BYTES_PER_PARAM * counts["unet"]
            + FROZEN_BYTES_PER_PARAM * (counts["vae"] + counts["text_encoder"]))


def cpu_adjustments(profile, *, cuda: Optional[bool] = None, memory_bytes: Optional[int] = None,
                    training_bytes: Optional[int] = None) -> tuple[Any, list[str]]:
    """The profile to rehearse on this machine and a line per change (or note).

    With CUDA nothing changes. Without it: batch sizes come down (InstructPix2Pix 1 sample per
    step without accumulation, PAC-Net 2 clips per step with the training videos cut so that it
    still takes the profile's number of steps), and the UNet trains with gradient checkpointing
    when the memory estimate plus headroom exceeds the machine's memory. Model configs, learning
    rates, resolutions and steps are left alone; precision is noted (the trainers resolve fp16
    to fp32 on the CPU themselves)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return profile, ["CUDA available: nothing changed (the profile's batch sizes and precision)"]
    notes: list[str] = []
    p2p, pac = profile.pix2pix_train, profile.pacnet_train

    p2p_changes: dict[str, Any] = {}
    if p2p.train_batch_size > 1 or p2p.gradient_accumulation_steps > 1:
        p2p_changes.update(train_batch_size=1, gradient_accumulation_steps=1)
        notes.append(f"ip2p_model: train_batch_size {p2p.train_batch_size} -> 1, gradient_accumulation_steps "
                     f"{p2p.gradient_accumulation_steps} -> 1 (an optimizer step is one sample instead of "
                     f"{p2p.train_batch_size} x {p2p.gradient_accumulation_steps})")
    if p2p.mixed_precision != "no":
        notes.append(f"ip2p_model: mixed_precision {p2p.mixed_precision} is resolved to fp32 by the trainer "
                     "(fp16 needs CUDA); not changed here")
    memory = total_memory_bytes() if memory_bytes is None else memory_bytes
    need = unet_training_bytes() if training_bytes is None else training_bytes
    fits = need + HEADROOM_BYTES <= memory
    if not p2p.gradient_checkpointing and not fits:
        p2p_changes["gradient_checkpointing"] = True
    notes.append(f"ip2p_model: UNet gradient checkpointing {'off' if fits else 'ON'}: estimated "
                 f"{need / GIB:.1f} GiB of weights, gradients and AdamW state + {HEADROOM_BYTES / GIB:.0f} GiB "
                 f"headroom {'fit in' if fits else 'exceed'} {memory / GIB:.1f} GiB of memory")

    pac_changes: dict[str, Any] = {}
    cpu_batch = 2
    if pac.batch_size > cpu_batch:
        pac_changes["batch_size"] = cpu_batch
        line = f"pacnet: batch_size {pac.batch_size} -> {cpu_batch} clips"
        if pac.max_train_videos is not None:
            steps = -(-pac.max_train_videos // pac.batch_size)
            pac_changes["max_train_videos"] = steps * cpu_batch
            line += (f", max_train_videos {pac.max_train_videos} -> {steps * cpu_batch} (still {steps} optimizer "
                     "step(s) per epoch)")
        notes.append(f"{line}; progress_estimates infers in batches of {cpu_batch * 4} (4 x batch_size)")
    if pac.mixed_precision != "no":
        notes.append(f"pacnet: mixed_precision {pac.mixed_precision} kept (accelerate decides on the CPU)")
    notes.append(f"evaluation: {profile.sampling.num_samples} samples in batches of "
                 f"{min(profile.sampling.batch_size, profile.sampling.num_samples)}, dtype "
                 f"{profile.sampling.dtype} (= float32 on the CPU), {profile.sampling.num_inference_steps} "
                 "denoising steps; unchanged")
    adjusted = replace(profile, pix2pix_train=replace(p2p, **p2p_changes), pacnet_train=replace(pac, **pac_changes))
    return adjusted, notes


def profile_differences(base: Any, other: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted field, base value, other value) for every dataclass field that differs, recursing
    into nested dataclasses (`pix2pix_train.max_train_steps`)."""
    out: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(base):
        a, b = getattr(base, f.name), getattr(other, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
            out += profile_differences(a, b, f"{prefix}{f.name}.")
        elif a != b:
            out.append((f"{prefix}{f.name}", a, b))
    return out


def rehearsal_setup(cuda: Optional[bool] = None):
    """(the `rehearsal` profile's differences from `full`, the profile as this machine runs it,
    the CPU notes)."""
    from pecn_ml.profiles import full_profile, rehearsal_profile

    rehearsal = rehearsal_profile()
    changes = [f"{name}: {a!r} -> {b!r}" for name, a, b in profile_differences(full_profile(), rehearsal)
               if name != "name"]
    profile, notes = cpu_adjustments(rehearsal, cuda=cuda)
    return changes, profile, notes


# --- results and printing -----------------------------------------------------------------------------

@dataclass
class StepResult:
    """One step of the rehearsal, as the parent measured it and the step reported it."""

    step: str                               # asset name (or a setup step)
    partition: Optional[str] = None
    status: str = "ok"                      # ok | FAILED
    wall_s: float = 0.0
    parameters: Optional[int] = None
    parameters_source: str = ""             # "metadata" | "safetensors <path>" | ""
    peak_rss_bytes: Optional[int] = None    # max over the step process and its descendants
    cuda_peak_bytes: Optional[int] = None
    seconds_per_step: Optional[float] = None
    bytes_written: Optional[int] = None     # net: after minus before
    pruned_bytes: Optional[int] = None      # written, then deleted by the step (optimizer-state checkpoints)
    run_id: str = ""
    error: str = ""
    log: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.step}/{self.partition}" if self.partition else self.step


def _gib(n: Optional[int]) -> str:
    return f"{n / GIB:.2f}" if n is not None else "-"


def format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    sign, n = ("-" if n < 0 else ""), abs(n)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{n} B"


def step_line(r: StepResult) -> str:
    """The line printed when a step ends."""
    params = f"{r.parameters:,} parameters ({r.parameters_source})" if r.parameters is not None else "no parameters"
    sps = f"{r.seconds_per_step:.2f} s/step" if r.seconds_per_step is not None else "- s/step"
    gpu = f", GPU peak {_gib(r.cuda_peak_bytes)} GiB" if r.cuda_peak_bytes is not None else ""
    pruned = f" (+{format_bytes(r.pruned_bytes)} written and pruned)" if r.pruned_bytes else ""
    return (f"{r.name}: {r.status} in {r.wall_s:.1f}s, {params}, peak RSS {_gib(r.peak_rss_bytes)} GiB{gpu}, "
            f"{sps}, {format_bytes(r.bytes_written)} written{pruned}")


COLUMNS = ("step", "status", "wall s", "parameters", "source", "peak RSS GiB", "GPU peak GiB", "s/step", "written",
           "pruned")


def table_rows(results: Iterable[StepResult]) -> list[tuple[str, ...]]:
    return [(r.name, r.status, f"{r.wall_s:.1f}", f"{r.parameters:,}" if r.parameters is not None else "-",
             r.parameters_source.split(" ")[0] or "-", _gib(r.peak_rss_bytes), _gib(r.cuda_peak_bytes),
             f"{r.seconds_per_step:.2f}" if r.seconds_per_step is not None else "-", format_bytes(r.bytes_written),
             format_bytes(r.pruned_bytes))
            for r in results]


def format_table(results: list[StepResult]) -> str:
    """A fixed-width table of every step (text columns left, numbers right)."""
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    left = {0, 1, 4}

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])])


def report_json(results: list[StepResult], *, total_s: float, ok: bool, profile_changes: list[str],
                cpu_notes: list[str], env_notes: list[str], machine: dict) -> dict:
    """What `rehearsal_report.json` holds."""
    return {"ok": ok, "total_wall_s": round(total_s, 1), "machine": machine,
            "profile_changes_from_full": profile_changes, "cpu_adjustments": cpu_notes, "environment": env_notes,
            "steps": [{**{k: v for k, v in dataclasses.asdict(r).items() if k != "extra"}, **r.extra,
                       "name": r.name} for r in results]}


# --- measuring ----------------------------------------------------------------------------------------

def tree_bytes(roots: Iterable[Path], exclude: Callable[[Path], bool] = lambda p: False) -> int:
    """Bytes under `roots` (missing ones count 0), leaving out top-level entries `exclude` names."""
    from pecn_ml.utils.usage import bytes_on_disk

    total = 0
    for root in roots:
        if not root.exists():
            continue
        for entry in root.iterdir():
            if exclude(entry):
                continue
            try:
                total += bytes_on_disk(entry)
            except FileNotFoundError:  # removed while we counted
                pass
    return total


def _excluded(entry: Path) -> bool:
    """The rehearsal's own files under the outputs folder (its DAGSTER_HOME, logs, report)."""
    return entry.name.startswith(HOME_PREFIX) or entry.name in (LOGS_DIR, REPORT_NAME, LOCK_NAME)


def metadata_value(meta: dict, key: str) -> Any:
    v = meta.get(key)
    return getattr(v, "value", v)


def _number(value: Any, kind: type) -> Any:
    try:
        return kind(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def step_measurements(meta: dict, handle: Any = None) -> dict:
    """From a materialisation's metadata (and, for the parameter count, the asset's handle): the
    numbers the report shows, each None when the step has none."""
    from pecn_ml.utils.usage import safetensors_parameters

    out: dict[str, Any] = {"parameters": _number(metadata_value(meta, "parameters"), int), "parameters_source": ""}
    if out["parameters"] is not None:
        out["parameters_source"] = "metadata"
    elif handle is not None and getattr(handle, "path", None):
        path = Path(handle.path)  # weights folders only (other handles name JSON or Excel files)
        if path.is_dir() and next(path.rglob("*.safetensors"), None) is not None:
            out["parameters"] = safetensors_parameters(path)
            out["parameters_source"] = f"safetensors {path}"
    out["cuda_peak_bytes"] = _number(metadata_value(meta, "cuda_peak_bytes"), int)
    out["seconds_per_step"] = _number(metadata_value(meta, "seconds_per_step"), float)
    out["pruned_bytes"] = _number(metadata_value(meta, "pruned_bytes"), int)
    out["child_peak_rss_bytes"] = max((_number(metadata_value(meta, k), int) or 0)
                                      for k in ("peak_rss_bytes", "peak_rss_children_bytes")) or None
    return out


# --- one step (in its own process) ---------------------------------------------------------------------

def rehearsal_definitions(profile, models_root: Path):
    """The Definitions of the rehearsal: the profile's folders, the local models for the hub names."""
    from pecn_assets.definitions import build_definitions
    from pecn_assets.resources import PecnSettings, PretrainedModels
    from pecn_ml.rehearsal import model_folders

    folders = model_folders(models_root.absolute())
    return build_definitions(profile, settings=PecnSettings.for_profile(profile),
                             models=PretrainedModels(pix2pix=str(folders.pix2pix), resnet=str(folders.resnet),
                                                     clip_text=str(folders.clip_text)))


def _failure_text(result) -> str:
    """The errors of a failed in-process run (step failures, failed blocking checks)."""
    import dagster as dg

    lines = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            err = event.event_specific_data.error
            lines.append(f"step {event.step_key} failed: {err.to_string() if err else '(no error)'}")
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed:
                lines.append(f"check {evaluation.check_name} failed")
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and not lines:
            lines.append(event.message or "run failed")
    return "\n".join(lines) or "run failed (no failure event)"


def run_asset_step(defs, asset: str, partition: Optional[str], log: LogFn) -> dict:
    """Materialise one asset partition into the instance at $DAGSTER_HOME; its measurements."""
    import dagster as dg

    from pecn_assets.partitions import add_seeds, deployment_seeds

    job = defs.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.get() as instance:
        add_seeds(instance, deployment_seeds(defs))  # the seed dimension's keys live in the instance
        result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(asset)],
                                        partition_key=partition, raise_on_error=False,
                                        tags={"pecn/rehearsal": "1"})
    out: dict[str, Any] = {"run_id": result.run_id, "status": "ok" if result.success else "FAILED"}
    if not result.success:
        out["error"] = _failure_text(result)
        return out
    meta: dict = {}
    for event in result.get_asset_materialization_events():
        meta.update(event.event_specific_data.materialization.metadata or {})
    try:
        handle = result.output_for_node(asset)
    except Exception as e:  # noqa: BLE001 - the count falls back to none
        log(f"no handle for {asset}: {type(e).__name__}: {e}")
        handle = None
    out.update(step_measurements(meta, handle))
    return out


def run_setup_step(step: str, profile, models_root: Path, defs_factory: Callable, log: LogFn) -> dict:
    """The steps before the asset graph: build the models, write the videos, observe the sources."""
    if step == MODELS_STEP:
        from pecn_ml.rehearsal import build_rehearsal_models
        from pecn_ml.utils.usage import safetensors_parameters

        def report(path: Path, seconds: float, fresh: bool) -> None:
            log(f"{path.name}: {'built' if fresh else 'reused'} in {seconds:.1f}s")

        models = build_rehearsal_models(models_root, on_built=report)
        folders = (models.pix2pix, models.resnet, models.clip_text)
        return {"status": "ok", "parameters": sum(safetensors_parameters(f) for f in folders),
                "parameters_source": f"safetensors {models_root}"}
    if step == DATA_STEP:
        from pecn_assets.demo import ensure_synthetic_data
        from pecn_assets.resources import PecnSettings

        ensure_synthetic_data(PecnSettings.for_profile(profile).data_path(), profile.synthetic)
        return {"status": "ok"}
    if step == OBSERVE_STEP:
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            result = defs_factory().resolve_job_def("observe_sources").execute_in_process(
                instance=instance, raise_on_error=False)
        return {"status": "ok" if result.success else "FAILED", "run_id": result.run_id,
                **({} if result.success else {"error": _failure_text(result)})}
    raise ValueError(f"unknown setup step {step!r}")


def step_main(args: argparse.Namespace) -> int:
    """`--step`: run one step in this process and write its result (JSON) to `--result-file`."""
    from pecn_ml.utils.usage import cuda_peak_memory_bytes, peak_rss

    _, profile, _ = rehearsal_setup()
    models_root = Path(args.models)
    t0 = time.perf_counter()
    try:
        if args.step in SETUP_STEPS:
            out = run_setup_step(args.step, profile, models_root, lambda: rehearsal_definitions(profile, models_root),
                                 log=lambda m: print(m, flush=True))
        else:
            out = run_asset_step(rehearsal_definitions(profile, models_root), args.step, args.partition,
                                 log=lambda m: print(m, flush=True))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the rehearsal
        import traceback

        traceback.print_exc()
        out = {"status": "FAILED", "error": f"{type(e).__name__}: {e}"}
    rss = peak_rss()
    out["self_peak_rss_bytes"] = rss.max_bytes
    if out.get("cuda_peak_bytes") is None and cuda_peak_memory_bytes() is not None:
        out["cuda_peak_bytes"] = cuda_peak_memory_bytes()  # steps that compute in this process
    out["step_seconds"] = round(time.perf_counter() - t0, 3)
    Path(args.result_file).write_text(json.dumps(out, default=str), encoding="utf-8")
    return 0 if out.get("status") == "ok" else 1


# --- the parent -----------------------------------------------------------------------------------------

def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def run_step_process(step: str, partition: Optional[str], *, args: argparse.Namespace, env: dict,
                     log_path: Path, measure_roots: list[Path]) -> StepResult:
    """Run one step in a child process; its wall time, peak RSS (wait4), bytes written and result."""
    before = tree_bytes(measure_roots, _excluded)
    result_file = log_path.with_suffix(".result.json")
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pecn_assets.rehearse", "--step", step, "--models", args.models,
               "--result-file", str(result_file)]
    if partition is not None:
        command += ["--partition", partition]
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    reported: dict = {}
    if result_file.is_file():
        reported = json.loads(result_file.read_text(encoding="utf-8"))
        result_file.unlink()
    wait4_rss = int(usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024))
    peaks = [wait4_rss, reported.get("self_peak_rss_bytes") or 0, reported.get("child_peak_rss_bytes") or 0]
    ok = process.returncode == 0 and reported.get("status") == "ok"
    error = reported.get("error", "")
    if not ok and not error:
        error = f"step process exited with {process.returncode} and reported no result"
    return StepResult(
        step=step, partition=partition, status="ok" if ok else "FAILED", wall_s=wall,
        parameters=reported.get("parameters"), parameters_source=reported.get("parameters_source", ""),
        peak_rss_bytes=max(peaks), cuda_peak_bytes=reported.get("cuda_peak_bytes"),
        seconds_per_step=reported.get("seconds_per_step"), pruned_bytes=reported.get("pruned_bytes"),
        bytes_written=tree_bytes(measure_roots, _excluded) - before, run_id=reported.get("run_id", ""),
        error=error, log=str(log_path),
        extra={"peak_rss_wait4_bytes": wait4_rss, "peak_rss_step_reported_bytes": reported.get("self_peak_rss_bytes"),
               "peak_rss_training_child_bytes": reported.get("child_peak_rss_bytes")})


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _clear(paths: Iterable[Path], log: LogFn) -> None:
    for p in paths:
        if p.exists():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            log(f"removed {p}")


def previous_run_paths(settings) -> list[Path]:
    """What an earlier rehearsal left that would let steps skip their work: its outputs and
    results (not the report and logs), and the frame caches (the synthetic videos stay)."""
    outputs = settings.outputs_path()
    paths = [p for p in outputs.iterdir() if p.name not in (LOGS_DIR, REPORT_NAME, LOCK_NAME)] \
        if outputs.exists() else []
    paths += [settings.results_path()] if settings.results_path().exists() else []
    data = settings.data_path()
    paths += sorted(data.glob("frames_*")) if data.exists() else []
    return paths


def machine_info(cuda: bool) -> dict:
    import platform

    import torch

    info = {"cpus": os.cpu_count(), "memory_bytes": total_memory_bytes(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": cuda}
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parent_main(args: argparse.Namespace, log: LogFn = print) -> int:
    import dagster as dg
    import torch

    from pecn_assets.demo import plan
    from pecn_assets.partitions import add_seeds, deployment_seeds
    from pecn_assets.resources import PecnSettings
    from pecn_ml.utils.cuda import ALLOW_CPU_ENV

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    changes, profile, cpu_notes = rehearsal_setup(cuda)
    settings = PecnSettings.for_profile(profile)
    log(f"rehearsal of the full profile ({'CUDA' if cuda else 'CPU'}); run sizes changed from `full` "
        "(pecn_ml/profiles.py, rehearsal_profile):")
    for line in changes:
        log(f"  {line}")
    log("this machine:")
    for line in cpu_notes:
        log(f"  {line}")

    outputs = settings.outputs_path()
    outputs.mkdir(parents=True, exist_ok=True)
    lock = open(outputs / LOCK_NAME, "w")  # held until this process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another rehearsal is running (it holds {outputs / LOCK_NAME}); not starting a second one")
        return 2
    logs = outputs / LOGS_DIR
    if not args.only:
        _clear([*previous_run_paths(settings), logs], log)
    logs.mkdir(exist_ok=True)
    if args.dagster_home:
        home = Path(args.dagster_home).absolute()
        home.mkdir(parents=True, exist_ok=True)
    else:
        home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX, dir=outputs))
    template = Path(__file__).resolve().parent.parent / "dagster_home" / "dagster.yaml"
    if template.is_file() and not (home / "dagster.yaml").exists():
        shutil.copy(template, home / "dagster.yaml")  # the instance settings of `make demo`
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env_notes = [f"DAGSTER_HOME={home} ({'kept' if args.keep or args.dagster_home else 'removed at the end'})"]
    if not cuda:
        env[ALLOW_CPU_ENV] = "1"
        env_notes.append(f"{ALLOW_CPU_ENV}=1 in the step processes: the full profile's GPU steps run on the CPU")
    for line in env_notes:
        log(f"  {line}")

    models_root = Path(args.models)
    roots = [settings.data_path(), outputs, settings.results_path(), models_root.absolute()]
    os.environ["DAGSTER_HOME"] = str(home)  # for plan(): the seed partitions live in the rehearsal's instance
    defs = rehearsal_definitions(profile, models_root)
    with dg.DagsterInstance.get() as instance:
        add_seeds(instance, deployment_seeds(defs))
        planned = plan(defs, instance)
    steps: list[tuple[str, Optional[str]]] = [(s, None) for s in SETUP_STEPS]
    steps += [(asset, None if key is None else str(key)) for asset, keys in planned for key in keys]
    if args.only:
        steps = [s for s in steps if s[0] in args.only]
    log(f"{len(steps)} steps, each in its own process (logs in {logs})")

    results: list[StepResult] = []
    ok = True
    for step, partition in steps:
        name = f"{step}/{partition}" if partition else step
        log(f"[{time.perf_counter() - t_start:7.1f}s] {name} ...")
        r = run_step_process(step, partition, args=args, env=env, log_path=logs / f"{_safe_name(name)}.log",
                             measure_roots=roots)
        results.append(r)
        log(f"[{time.perf_counter() - t_start:7.1f}s] {step_line(r)}")
        if r.status != "ok":
            log(f"FAILED: {r.name}\n{r.error}\n--- last lines of {r.log} ---\n{_tail(Path(r.log))}")
            ok = False
            break

    total = time.perf_counter() - t_start
    log("")
    log(format_table(results))
    log(f"total wall time {total:.1f}s ({total / 60:.1f} min); {'all steps ok' if ok else 'FAILED'}")
    report = report_json(results, total_s=total, ok=ok, profile_changes=changes, cpu_notes=cpu_notes,
                         env_notes=env_notes, machine=machine_info(cuda))
    path = outputs / REPORT_NAME
    path.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    log(f"report: {path}")
    if not args.keep and not args.dagster_home:
        kept = previous_run_paths(settings)
        freed = tree_bytes([outputs, settings.results_path()], _excluded) + sum(
            tree_bytes([p]) for p in kept if p.name.startswith("frames_"))
        _clear([home, *kept], lambda _m: None)
        log(f"removed the throwaway DAGSTER_HOME, outputs, results and frame caches ({format_bytes(freed)}); "
            f"kept the models ({models_root}), the synthetic videos, the report and the logs (--keep keeps all)")
    return 0 if ok else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the DAGSTER_HOME, the trained models and the evaluations")
    parser.add_argument("--dagster-home", help="use (and keep) this DAGSTER_HOME instead of a throwaway one")
    parser.add_argument("--models", default=MODELS_DIR, help="folder of the full-size random models")
    parser.add_argument("--only", nargs="*", help="run only these steps (upstream materialised before, e.g. with "
                        "--dagster-home); nothing is cleared first")
    parser.add_argument("--step", help=argparse.SUPPRESS)          # internal: run one step here
    parser.add_argument("--partition", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*(is currently in beta|is currently in preview).*")
    if args.step:
        return step_main(args)
    return parent_main(args, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
