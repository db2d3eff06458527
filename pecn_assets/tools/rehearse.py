"""`make rehearse`: the full profile's code path and model sizes (random weights, no hub) on a handful
of synthetic videos, every step in a process of its own, measured; a table at the end and in
`outputs/rehearsal/rehearsal_report.json` (docs/OPERATIONS.md, "Rehearsal").

    python -m pecn_assets.tools.rehearse [--keep] [--dagster-home DIR] [--models DIR] [--only STEP ...]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, astuple, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import dagster as dg
import torch

from pecn_assets.partitions import add_seeds, deployment_seeds
from pecn_assets.resources import PecnSettings, PretrainedModels
from pecn_assets.tools.demo import ensure_synthetic_data
from pecn_assets.tools.materialise import failure_text, in_order, plan_steps, run_partition
from pecn_ml.deployment import Deployment
from pecn_ml.rehearsal import (StepResult, build_rehearsal_models, format_bytes, format_table, model_folders,
                               rehearsal_setup, report_json, step_line, step_measurements, total_memory_bytes)
from pecn_ml.utils.usage import (bytes_on_disk, cuda_peak_memory_bytes, log_tail, peak_rss, run_logged,
                                 safetensors_parameters)

MODELS_DIR = "outputs/rehearsal_models"
REPORT_NAME = "rehearsal_report.json"
LOGS_DIR = "_rehearse_logs"
LOCK_NAME = "_rehearse.lock"  # one rehearsal at a time per outputs folder
HOME_PREFIX = "_dagster_home-"
# Steps before the asset graph, each in its own process like the assets.
MODELS_STEP, DATA_STEP, OBSERVE_STEP = "rehearsal_models", "synthetic_data", "observe_sources"
SETUP_STEPS = (MODELS_STEP, DATA_STEP, OBSERVE_STEP)
REPO = Path(__file__).resolve().parents[2]
LogFn = Callable[[str], None]


def tree_bytes(roots: Iterable[Path], exclude: Callable[[Path], bool] = lambda p: False) -> int:
    """Bytes under `roots` (missing ones count 0), leaving out top-level entries `exclude` names."""
    total = 0
    for entry in (e for root in roots if root.exists() for e in root.iterdir() if not exclude(e)):
        try:
            total += bytes_on_disk(entry)
        except FileNotFoundError:  # removed while we counted
            pass
    return total


def _excluded(entry: Path) -> bool:
    """The rehearsal's own files under the outputs folder (its DAGSTER_HOME, logs, report)."""
    return entry.name.startswith(HOME_PREFIX) or entry.name in (LOGS_DIR, REPORT_NAME, LOCK_NAME)


# --- one step (in its own process) ----------------------------------------------------------------

def rehearsal_deployment(home: Path | str = "", cuda: bool = True) -> Deployment:
    """The rehearsal's own profile, folders and seeds; the environment's devices; the CPU allowed without CUDA."""
    return Deployment(profile="rehearsal", gpu_devices=Deployment.from_env(os.environ).gpu_devices,
                      allow_cpu=not cuda, dagster_home=str(home))


def rehearsal_definitions(profile, models_root: Path, deployment: Deployment = Deployment()):
    """The Definitions of the rehearsal: `profile` as given, the local model folders for the hub names."""
    from pecn_assets.build import build_definitions

    folders = asdict(model_folders(models_root.absolute()))  # pix2pix, resnet, clip_text: PretrainedModels' names
    return build_definitions(replace(deployment, profile=profile.name), profile=profile,
                             models=PretrainedModels(**{name: str(path) for name, path in folders.items()}))


def run_step(step: str, partition: Optional[str], profile, models_root: Path, deployment: Deployment) -> dict:
    """Run one setup step or asset partition in the instance at `deployment.dagster_home`."""
    if step == MODELS_STEP:
        models = build_rehearsal_models(models_root)
        return {"status": "ok", "parameters_source": f"safetensors {models_root}",
                "parameters": safetensors_parameters(*astuple(models))}
    if step == DATA_STEP:
        ensure_synthetic_data(PecnSettings.for_profile(profile).data_path(), profile.synthetic)
        return {"status": "ok"}
    defs = rehearsal_definitions(profile, models_root, deployment)
    with dg.DagsterInstance.from_config(deployment.dagster_home) as instance:
        result = (defs.resolve_job_def(OBSERVE_STEP).execute_in_process(instance=instance, raise_on_error=False)
                  if step == OBSERVE_STEP else run_partition(defs, instance, step, partition, {"pecn/rehearsal": "1"}))
    out: dict[str, Any] = {"run_id": result.run_id, "status": "ok" if result.success else "FAILED"}
    if not result.success or step == OBSERVE_STEP:  # the parent added the seeds to the instance before
        return out if result.success else {**out, "error": failure_text(result)}
    meta = {k: v for e in result.get_asset_materialization_events()
            for k, v in (e.event_specific_data.materialization.metadata or {}).items()}
    try:
        handle = result.output_for_node(step)
    except Exception as e:  # noqa: BLE001 - the count falls back to none
        print(f"no handle for {step}: {type(e).__name__}: {e}", flush=True)
        handle = None
    return {**out, **step_measurements(meta, handle)}


def step_main(args: argparse.Namespace) -> int:
    """`--step`: run one step in this process and write its result (JSON) to `--result-file`."""
    cuda = torch.cuda.is_available()
    _, profile, _ = rehearsal_setup(cuda)
    t0 = time.perf_counter()
    try:
        out = run_step(args.step, args.partition, profile, Path(args.models),
                       rehearsal_deployment(args.dagster_home, cuda))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the rehearsal
        traceback.print_exc()
        out = {"status": "FAILED", "error": f"{type(e).__name__}: {e}"}
    out["self_peak_rss_bytes"] = peak_rss().max_bytes
    if out.get("cuda_peak_bytes") is None:
        out["cuda_peak_bytes"] = cuda_peak_memory_bytes()  # steps that compute in this process
    out["step_seconds"] = round(time.perf_counter() - t0, 3)
    Path(args.result_file).write_text(json.dumps(out, default=str), encoding="utf-8")
    return 0 if out.get("status") == "ok" else 1


# --- the parent -------------------------------------------------------------------------------------

def run_step_process(step: str, partition: Optional[str], *, args: argparse.Namespace, home: Path,
                     log_path: Path, measure_roots: list[Path]) -> StepResult:
    """Run one step in a child process; its wall time, peak RSS (wait4), bytes written and result."""
    before = tree_bytes(measure_roots, _excluded)
    result_file = log_path.with_suffix(".result.json")
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pecn_assets.tools.rehearse", "--step", step, "--models", args.models,
               "--dagster-home", str(home), "--result-file", str(result_file),
               *(["--partition", partition] if partition is not None else [])]
    code, wall, wait4_rss = run_logged(command, log_path)  # wait4: the step and its training child
    reported: dict = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
    result_file.unlink(missing_ok=True)
    ok = code == 0 and reported.get("status") == "ok"
    error = reported.get("error", "") or ("" if ok else f"step process exited with {code} and reported no result")
    self_rss, child_rss = reported.get("self_peak_rss_bytes"), reported.get("child_peak_rss_bytes")
    return StepResult(
        step=step, partition=partition, status="ok" if ok else "FAILED", wall_s=wall,
        parameters=reported.get("parameters"), parameters_source=reported.get("parameters_source", ""),
        peak_rss_bytes=max(wait4_rss, self_rss or 0, child_rss or 0), cuda_peak_bytes=reported.get("cuda_peak_bytes"),
        seconds_per_step=reported.get("seconds_per_step"), pruned_bytes=reported.get("pruned_bytes"),
        bytes_written=tree_bytes(measure_roots, _excluded) - before, run_id=reported.get("run_id", ""),
        error=error, log=str(log_path),
        extra={"peak_rss_wait4_bytes": wait4_rss, "peak_rss_step_reported_bytes": self_rss,
               "peak_rss_training_child_bytes": child_rss})


def _clear(paths: Iterable[Path], log: LogFn) -> None:
    for p in paths:
        if p.exists():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            log(f"removed {p}")


def previous_run_paths(settings) -> list[Path]:
    """What an earlier rehearsal left that would let steps skip their work: its outputs and
    results (not the report and logs), and the frame caches (the synthetic videos stay)."""
    outputs, results, data = settings.outputs_path(), settings.results_path(), settings.data_path()
    paths = [p for p in outputs.iterdir() if p.name not in (LOGS_DIR, REPORT_NAME, LOCK_NAME)] \
        if outputs.exists() else []
    return paths + ([results] if results.exists() else []) + (sorted(data.glob("frames_*")) if data.exists() else [])


def machine_info(cuda: bool) -> dict:
    info = {"cpus": os.cpu_count(), "memory_bytes": total_memory_bytes(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": cuda}
    return {**info, "gpu": torch.cuda.get_device_name(0)} if cuda else info


def _home(args: argparse.Namespace, outputs: Path) -> Path:
    """The rehearsal's DAGSTER_HOME (`--dagster-home`, else a throwaway one), with `make demo`'s settings."""
    if args.dagster_home:
        home = Path(args.dagster_home).absolute()
        home.mkdir(parents=True, exist_ok=True)
    else:
        home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX, dir=outputs))
    template = REPO / "dagster_home" / "dagster.yaml"
    if template.is_file() and not (home / "dagster.yaml").exists():
        shutil.copy(template, home / "dagster.yaml")
    return home


def planned_steps(profile, models_root: Path, deployment: Deployment, only: Optional[list[str]]) -> list:
    """The setup steps, then every asset partition in graph order (the seeds added to the instance)."""
    defs = rehearsal_definitions(profile, models_root, deployment)
    with dg.DagsterInstance.from_config(deployment.dagster_home) as instance:
        add_seeds(instance, deployment_seeds(defs))
        steps = [(s, None) for s in SETUP_STEPS] + plan_steps(defs, instance)
    return [s for s in steps if not only or s[0] in only]


def _finish(results: list[StepResult], ok: bool, t_start: float, report: dict, settings, home: Path,
            args: argparse.Namespace, log: LogFn) -> int:
    """Print the table, write the report, remove what a later rehearsal must not find (unless kept)."""
    total = time.perf_counter() - t_start
    log(f"\n{format_table(results)}")
    log(f"total wall time {total:.1f}s ({total / 60:.1f} min); {'all steps ok' if ok else 'FAILED'}")
    path = settings.outputs_path() / REPORT_NAME
    path.write_text(json.dumps(report_json(results, total_s=total, ok=ok, **report), indent=1, default=str),
                    encoding="utf-8")
    log(f"report: {path}")
    if not args.keep and not args.dagster_home:
        kept = previous_run_paths(settings)
        freed = tree_bytes([settings.outputs_path(), settings.results_path()], _excluded) + sum(
            tree_bytes([p]) for p in kept if p.name.startswith("frames_"))
        _clear([home, *kept], lambda _m: None)
        log(f"removed the throwaway DAGSTER_HOME, outputs, results and frame caches ({format_bytes(freed)}); "
            f"kept the models ({args.models}), the synthetic videos, the report and the logs (--keep keeps all)")
    return 0 if ok else 1


def parent_main(args: argparse.Namespace, log: LogFn = print) -> int:
    t_start, cuda = time.perf_counter(), torch.cuda.is_available()
    changes, profile, cpu_notes = rehearsal_setup(cuda)
    settings = PecnSettings.for_profile(profile)
    log(f"rehearsal of the full profile ({'CUDA' if cuda else 'CPU'}); run sizes changed from `full` "
        "(pecn_ml/profiles.py, rehearsal_profile):\n" + "\n".join(f"  {line}" for line in changes)
        + "\nthis machine:\n" + "\n".join(f"  {line}" for line in cpu_notes))
    outputs, logs = settings.outputs_path(), settings.outputs_path() / LOGS_DIR
    outputs.mkdir(parents=True, exist_ok=True)
    lock = open(outputs / LOCK_NAME, "w")  # held until this process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another rehearsal is running (it holds {outputs / LOCK_NAME}); not starting a second one")
        return 2
    if not args.only:
        _clear([*previous_run_paths(settings), logs], log)
    logs.mkdir(exist_ok=True)
    home = _home(args, outputs)
    env_notes = [f"DAGSTER_HOME={home} ({'kept' if args.keep or args.dagster_home else 'removed at the end'})"]
    if not cuda:
        env_notes.append("allow_cpu in the step processes' settings: the full profile's GPU steps run on the CPU")
    log("\n".join(f"  {line}" for line in env_notes))
    roots = [settings.data_path(), outputs, settings.results_path(), Path(args.models).absolute()]
    steps = planned_steps(profile, Path(args.models), rehearsal_deployment(home, cuda), args.only)
    log(f"{len(steps)} steps, each in its own process (logs in {logs})")
    results: list[StepResult] = []

    def run(step: str, partition: Optional[str]) -> tuple[bool, str]:
        name = f"{step}/{partition}" if partition else step
        r = run_step_process(step, partition, args=args, home=home, measure_roots=roots,
                             log_path=logs / ("".join(c if c.isalnum() or c in "-_." else "_" for c in name) + ".log"))
        results.append(r)
        failed = f"\nFAILED: {r.name}\n{r.error}\n--- last lines of {r.log} ---\n{log_tail(Path(r.log))}"
        return r.status == "ok", step_line(r) + ("" if r.status == "ok" else failed)

    ok = in_order(steps, run, log, t_start, announce=True)
    report = dict(profile_changes=changes, cpu_notes=cpu_notes, env_notes=env_notes, machine=machine_info(cuda))
    return _finish(results, ok, t_start, report, settings, home, args, log)


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
    return step_main(args) if args.step else parent_main(args, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
