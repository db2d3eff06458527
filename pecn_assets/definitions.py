"""The one `Definitions` of PECN (loaded by workspace.yaml and `dagster dev`).

The deployment is chosen here, once: `deployment_from_env()` reads the environment

    PECN_PROFILE        demo (default) | full | smoke          (pecn_ml/profiles.py)
    PECN_SEEDS          training seeds to start with, e.g. "0,1,2" (default: the profile's pix2pix
                        seed); added to the dynamic seed partitions when missing, more in the UI
    PECN_DATA_DIR, PECN_OUTPUTS_DIR, PECN_RESULTS_DIR          folders (default: the profile's)
    PECN_TRACKING       tensorboard (default) | mlflow | none
    MLFLOW_TRACKING_URI with mlflow: e.g. sqlite:////abs/mlflow.db (default: MLflow's own)
    PECN_GPU_DEVICES    devices GPU steps claim from, device indices only, e.g. "0,1,2,3"; ""
                        means none (default: every visible CUDA device; none on a CPU machine;
                        set it to simulate devices); anything else fails the load, value named
    PECN_GPU_LOCK_DIR   the device locks (default: $DAGSTER_HOME/gpu_locks)
    PECN_TRAIN_PROCESSES  training processes (= GPUs) per ip2p_model/pacnet step (default 1;
                        also the nvidia.com/gpu request of their pods on Kubernetes)
    PECN_GPU_POOL_LIMIT the `gpu` pool's limit, set explicitly (default: claimable devices //
                        PECN_TRAIN_PROCESSES, set when the platform starts: pecn_assets/gpu_pool.py)
    PECN_ALLOW_CPU      1: GPU steps of the full profile may run on the CPU (the rehearsal)
    PECN_SWEEP_CRON     the weekly backfill's cron: missing or stale ip2p_model / pacnet
                        partitions are trained then (default "0 3 * * 6"; pecn_assets/automation.py)
    PECN_ARTIFACTS_DIR  where the artifact I/O manager keeps its JSON handles
                        (default: {outputs}/_artifacts, beside the checkpoints they name, so
                        every step pod that sees the outputs sees them too)

and `build_definitions(profile, seeds, ...)` builds partitions, assets, checks, jobs and resources
from that one choice: nothing else reads the profile, so they cannot disagree.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import dagster as dg

from pecn_assets.assets.data import build_data_assets, raw_annotations, raw_videos
from pecn_assets.assets.evaluation import build_evaluation_assets
from pecn_assets.assets.pix2pix import build_pix2pix_assets
from pecn_assets.assets.pretrained import build_pretrained_assets
from pecn_assets.assets.progress import build_progress_assets
from pecn_assets.automation import Automation, backfill_cron
from pecn_assets.checks import build_checks
from pecn_assets.gpu_pool import K8S_EXECUTOR, build_gpu_pool_sensor, parse_pool_limit
from pecn_assets.io_manager import ArtifactIOManager
from pecn_assets.jobs import build_jobs, pecn_executor
from pecn_assets.partitions import SEEDS_METADATA, Partitions
from pecn_assets.resources import PecnSettings, PretrainedModels, Tracking
from pecn_ml.profiles import Profile, get_profile
from pecn_ml.training.tracking import BACKENDS
from pecn_ml.utils.cuda import allow_cpu_from_env
from pecn_ml.utils.gpu_devices import DEVICES_ENV, parse_device_indices


def default_seeds(profile: Profile) -> tuple[int, ...]:
    """One training seed: the profile's InstructPix2Pix seed (0 when it has none)."""
    seed = profile.pix2pix_train.seed
    return (int(seed) if seed is not None else 0,)


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1, 2" -> (0, 1, 2); a clear error for anything else."""
    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise ValueError(f"PECN_SEEDS={text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}={text!r}: expected a positive integer")
    return int(text)


def _gpu_devices(env: Mapping[str, str]) -> Optional[str]:
    """PECN_GPU_DEVICES as given (None when unset), refused now unless it lists device indices."""
    text = env.get(DEVICES_ENV)
    if text is not None:
        parse_device_indices(text, DEVICES_ENV)
    return text


def deployment_from_env(env: Mapping[str, str] = os.environ) -> dict:
    """The keyword arguments of `build_definitions` that the environment chooses (module docstring)."""
    profile = get_profile(env.get("PECN_PROFILE") or "demo")
    seeds = parse_seeds(env.get("PECN_SEEDS", "")) or default_seeds(profile)
    settings = PecnSettings.for_profile(
        profile, env.get("PECN_DATA_DIR"), env.get("PECN_OUTPUTS_DIR"), env.get("PECN_RESULTS_DIR"),
        gpu_lock_dir=env.get("PECN_GPU_LOCK_DIR", ""), train_processes=_positive_int(env, "PECN_TRAIN_PROCESSES", 1),
        allow_cpu=allow_cpu_from_env(env), gpu_devices=_gpu_devices(env))
    tracking = Tracking(backend=env.get("PECN_TRACKING") or "tensorboard",
                        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", ""))
    return {"profile": profile, "seeds": seeds, "settings": settings, "tracking": tracking,
            "artifacts_dir": env.get("PECN_ARTIFACTS_DIR") or None,
            "gpu_pool_limit": parse_pool_limit(env.get("PECN_GPU_POOL_LIMIT")),
            "automation": Automation(backfill_cron(env))}


def build_assets(parts: Partitions, train_processes: int = 1, automation: Automation = Automation()) -> list:
    """Every asset of one deployment, the observable sources first (`train_processes`: the GPUs
    of a training step's pod on Kubernetes; `automation`: the weekly backfill's conditions)."""
    return [raw_annotations, raw_videos, *build_data_assets(parts, automation), *build_pretrained_assets(parts),
            *build_progress_assets(parts, train_processes, automation),
            *build_pix2pix_assets(parts, train_processes, automation), *build_evaluation_assets(parts, automation)]


def build_definitions(profile: Profile, seeds: Optional[tuple[int, ...]] = None, *,
                      settings: Optional[PecnSettings] = None, models: Optional[PretrainedModels] = None,
                      tracking: Optional[Tracking] = None, artifacts_dir: Optional[str] = None,
                      gpu_pool_limit: Optional[int] = None, automation: Optional[Automation] = None) -> dg.Definitions:
    """The Definitions of one deployment: `profile`, training `seeds` (default: the profile's one),
    folders (`settings`, default: the profile's), hub weights, tracking, artifact storage, and an
    explicit `gpu` pool limit (None: sized to the machine by the `gpu_pool_size` sensor), and the
    automation conditions (default: the weekly backfill at its default cron)."""
    parts = Partitions.build(profile, seeds or default_seeds(profile))
    settings = settings or PecnSettings.for_profile(profile)
    artifacts_dir = artifacts_dir or str(settings.outputs_path() / "_artifacts")
    assets = build_assets(parts, settings.train_processes, automation or Automation())
    jobs, sensors = build_jobs(parts.seeds)
    executor = pecn_executor()
    sensors = [*sensors, build_gpu_pool_sensor(settings, executor.name == K8S_EXECUTOR, gpu_pool_limit)]
    if tracking is not None and tracking.backend not in BACKENDS:
        raise ValueError(f"tracking backend {tracking.backend!r}: expected one of {', '.join(BACKENDS)}")
    return dg.Definitions(
        assets=assets, asset_checks=build_checks(parts), jobs=jobs, sensors=sensors,
        executor=executor,
        resources={"settings": settings, "models": models or PretrainedModels(),
                   "tracking": tracking or Tracking(), "io_manager": ArtifactIOManager(root=artifacts_dir)},
        metadata={"pecn/profile": profile.name, SEEDS_METADATA: ",".join(str(s) for s in parts.seeds)},
    )


defs = build_definitions(**deployment_from_env())
