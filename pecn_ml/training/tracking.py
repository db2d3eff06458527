"""Experiment tracking through accelerate's trackers: TensorBoard by default, MLflow when configured
(`mlflow_tracking_uri`: a local SQLite/file store or a server; needs `mlflow-skinny`). Only the main
process writes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from pecn_ml.deployment import TRACKING_BACKENDS as BACKENDS


@dataclass(frozen=True)
class TrackingConfig:
    """Where a training run logs (chosen by the deployment; the Dagster assets add the tags)."""

    backend: str = "tensorboard"                 # "tensorboard" | "mlflow" | "none"
    experiment: str = "pecn"                     # MLflow experiment name
    run_name: Optional[str] = None               # MLflow run name (default: the trainer's)
    mlflow_tracking_uri: Optional[str] = None    # e.g. "sqlite:////abs/mlflow.db"; None: MLflow's own default
    tags: Mapping[str, str] = field(default_factory=dict)   # e.g. Dagster run id, partition

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"TrackingConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "mlflow" and self.mlflow_tracking_uri == "":
            raise ValueError("TrackingConfig.mlflow_tracking_uri is empty: pass None for MLflow's default")


@dataclass(frozen=True)
class TrackingInfo:
    """Where a finished run's logs are: a TensorBoard folder or an MLflow run (URI + ids)."""

    backend: str
    log_dir: Optional[str] = None          # TensorBoard event files
    tracking_uri: Optional[str] = None     # MLflow
    experiment: Optional[str] = None
    run_id: Optional[str] = None
    tags: Mapping[str, str] = field(default_factory=dict)


def accelerator_kwargs(tracking: Optional[TrackingConfig], out_dir: Path, tb_name: str,
                       purge_step: Optional[int] = None) -> dict[str, Any]:
    """`log_with` for `Accelerator(...)`: a TensorBoard tracker writing to `out_dir/tb_name`, or an
    MLflow tracker tagged with `tracking.tags`; nothing for backend "none"."""
    tracking = tracking or TrackingConfig()
    if tracking.backend == "none":
        return {}
    if tracking.backend == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        return {"log_with": [TensorBoardTracker(tb_name, str(out_dir), purge_step=purge_step)]}
    import mlflow
    from accelerate.tracking import MLflowTracker

    if tracking.mlflow_tracking_uri:
        mlflow.set_tracking_uri(tracking.mlflow_tracking_uri)
    return {"log_with": [MLflowTracker(tracking.experiment, tags=dict(tracking.tags),
                                       run_name=tracking.run_name or tb_name)]}


def start_tracking(accelerator: Any, tracking: Optional[TrackingConfig], project: str,
                   config: Mapping[str, Any]) -> TrackingInfo:
    """Start the trackers (hyper-parameters = `config`), tag the run, and say where it logs (on
    ranks > 0 only the backend and tags)."""
    tracking = tracking or TrackingConfig()
    info = TrackingInfo(backend=tracking.backend, tags=dict(tracking.tags))
    if tracking.backend == "none" or not accelerator.is_main_process:
        return info
    # hyper-parameters a tracker accepts: numbers, strings and bools as they are, the rest as text
    accelerator.init_trackers(project, config={
        k: v if isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)) else str(v)
        for k, v in config.items()})
    tag_run(accelerator, dict(tracking.tags))
    if tracking.backend == "tensorboard":
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        return replace(info, log_dir=str(Path(writer.log_dir).absolute())
                       if writer is not None and hasattr(writer, "log_dir") else None)
    import mlflow

    run = mlflow.active_run()
    return replace(info, tracking_uri=mlflow.get_tracking_uri(), experiment=tracking.experiment,
                   run_id=run.info.run_id if run is not None else None)


def tag_run(accelerator: Any, tags: Mapping[str, str]) -> None:
    """Tags on the run: MLflow run tags, or TensorBoard text entries under `tags/`."""
    if not tags or not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "mlflow":
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})
        elif tracker.name == "tensorboard":
            for k, v in tags.items():
                tracker.tracker.add_text(f"tags/{k}", str(v))
            tracker.tracker.flush()


def log_image(accelerator: Any, name: str, image: Any, step: int) -> None:
    """An (H, W, 3) uint8 image to TensorBoard (other trackers get the PNG files only)."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.tracker.add_image(name, image, step, dataformats="HWC")
