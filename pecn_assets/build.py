"""Builds the `Definitions` of one deployment (`pecn_assets.definitions` holds the one the
environment chooses; the tools and tests build their own from a `Deployment`)."""

from __future__ import annotations

from typing import Optional

import dagster as dg

from pecn_assets.assets.data import build_data_assets, raw_annotations, raw_videos
from pecn_assets.assets.evaluation import build_evaluation_assets
from pecn_assets.assets.pix2pix import build_pix2pix_assets
from pecn_assets.assets.pretrained import build_pretrained_assets
from pecn_assets.assets.progress import build_progress_assets
from pecn_assets.automation import Automation, backfill_cron
from pecn_assets.checks import build_checks
from pecn_assets.gpu_pool import build_gpu_pool_sensor
from pecn_assets.io_manager import ArtifactIOManager
from pecn_assets.jobs import build_jobs, pecn_executor
from pecn_assets.partitions import SEEDS_METADATA, Partitions
from pecn_assets.resources import PecnSettings, PretrainedModels, Tracking
from pecn_ml.deployment import Deployment
from pecn_ml.profiles import Profile, get_profile
from pecn_ml.training.tracking import BACKENDS


def default_seeds(profile: Profile) -> tuple[int, ...]:
    """One training seed: the profile's InstructPix2Pix seed (0 when it has none)."""
    seed = profile.pix2pix_train.seed
    return (int(seed) if seed is not None else 0,)


def build_assets(parts: Partitions, train_processes: int = 1, automation: Automation = Automation(),
                 deployment: Deployment = Deployment()) -> list:
    """Every asset of one deployment, the observable sources first (`train_processes`: the GPUs of a
    training step's pod on Kubernetes; `deployment`: the other pod settings)."""
    return [raw_annotations, raw_videos, *build_data_assets(parts, automation), *build_pretrained_assets(parts),
            *build_progress_assets(parts, train_processes, automation, deployment),
            *build_pix2pix_assets(parts, train_processes, automation, deployment),
            *build_evaluation_assets(parts, automation, deployment)]


def build_definitions(deployment: Deployment = Deployment(), *, profile: Optional[Profile] = None,
                      seeds: Optional[tuple[int, ...]] = None, settings: Optional[PecnSettings] = None,
                      models: Optional[PretrainedModels] = None, tracking: Optional[Tracking] = None) -> dg.Definitions:
    """The Definitions of one `deployment`; tests and tools may replace its `profile` (default: the
    one it names), training `seeds`, `settings`, hub weights (`models`) and `tracking`."""
    profile = profile or get_profile(deployment.profile)
    parts = Partitions.build(profile, seeds or deployment.seeds or default_seeds(profile))
    settings = settings or PecnSettings.for_deployment(deployment, profile)
    tracking = tracking or Tracking.for_deployment(deployment)
    if tracking.backend not in BACKENDS:
        raise ValueError(f"tracking backend {tracking.backend!r}: expected one of {', '.join(BACKENDS)}")
    automation = Automation(backfill_cron(deployment.sweep_cron))
    executor = pecn_executor(deployment.executor)
    jobs, sensors = build_jobs(parts.seeds, executor, deployment.automation)
    artifacts_dir = deployment.artifacts_dir or str(settings.outputs_path() / "_artifacts")
    return dg.Definitions(
        assets=build_assets(parts, settings.train_processes, automation, deployment),
        asset_checks=build_checks(parts), jobs=jobs, sensors=[*sensors, build_gpu_pool_sensor(settings, deployment)],
        executor=executor,
        resources={"settings": settings, "models": models or PretrainedModels(), "tracking": tracking,
                   "io_manager": ArtifactIOManager(root=artifacts_dir)},
        metadata={"pecn/profile": profile.name, SEEDS_METADATA: ",".join(str(s) for s in parts.seeds)},
    )

