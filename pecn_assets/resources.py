"""Resources: where things live and how GPU steps use the GPUs (settings), the hub weights of the
real run (models), where training runs log (tracking); built once per deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import dagster as dg
from pydantic import Field

from pecn_ml.deployment import Deployment
from pecn_ml.profiles import CLIP_NAME, PIX2PIX_BASE, RESNET_NAME, Profile, get_profile
from pecn_ml.training.tracking import BACKENDS, TrackingConfig


class PecnSettings(dg.ConfigurableResource):
    """The folders for data, trained models and results, and how GPU steps use the GPUs."""

    data_dir: str = Field(default="", description="SSv2 folder (annotations/, videos/, frames_RxR/)")
    outputs_dir: str = Field(default="", description="trained models, one folder per training run")
    results_dir: str = Field(default="", description="evaluation results and reports")
    gpu_lock_dir: str = Field(default="", description="one lock file per GPU device (local to the machine "
                              "that owns the GPUs); empty: {outputs_dir}/gpu_locks")
    gpu_devices: Optional[str] = Field(default=None, description="devices GPU steps claim from, device "
                                       "indices such as '0,1,2,3' ('' none); None: every visible CUDA device")
    gpu_claim_timeout_s: float = Field(default=0.0, ge=0, description="fail a step that waited this long for "
                                       "a free device (and retry it); 0: wait (logging who holds them) for ever")
    train_processes: int = Field(default=1, ge=1, description="training processes (one GPU each) per "
                                 "ip2p_model/pacnet step; a run's config may ask for another number")
    allow_cpu: bool = Field(default=False, description="let GPU steps of a profile that needs CUDA run "
                            "on the CPU (the rehearsal); otherwise they fail at once without a GPU")
    prune_training_state: bool = Field(default=True, description="after the final save_pretrained, "
                                       "delete the optimizer-state checkpoints of the finished training")

    @classmethod
    def for_profile(cls, profile: Profile, data_dir: Optional[str] = None, outputs_dir: Optional[str] = None,
                    results_dir: Optional[str] = None, **gpu: Any) -> "PecnSettings":
        """The profile's folders, each overridable (empty or None: the profile's); `gpu`: other fields."""
        return cls(data_dir=str(Path(data_dir or profile.data_dir).absolute()),
                   outputs_dir=str(Path(outputs_dir or profile.outputs_dir).absolute()),
                   results_dir=str(Path(results_dir or profile.results_dir).absolute()), **gpu)

    @classmethod
    def for_deployment(cls, deployment: Deployment, profile: Optional[Profile] = None) -> "PecnSettings":
        """The deployment's settings: its folders (else its profile's), devices, locks, processes."""
        profile = profile or get_profile(deployment.profile)
        outputs = Path(deployment.outputs_dir or profile.outputs_dir).absolute()
        return cls.for_profile(profile, deployment.data_dir, str(outputs), deployment.results_dir,
                               gpu_lock_dir=str(deployment.lock_dir(outputs)), gpu_devices=deployment.gpu_devices,
                               train_processes=deployment.train_processes, allow_cpu=deployment.allow_cpu)

    def gpu_lock_path(self) -> Path:
        """Where the device locks live (created on first use): gpu_lock_dir, else {outputs}/gpu_locks."""
        return Path(self.gpu_lock_dir).absolute() if self.gpu_lock_dir else self.outputs_path() / "gpu_locks"

    def _path(self, name: str) -> Path:
        value = getattr(self, name)
        if not value:
            raise ValueError(f"PecnSettings.{name} is empty: build the settings with PecnSettings.for_profile")
        return Path(value).absolute()

    def data_path(self) -> Path:
        return self._path("data_dir")

    def outputs_path(self) -> Path:
        return self._path("outputs_dir")

    def results_path(self) -> Path:
        return self._path("results_dir")

    def annotations_path(self) -> Path:
        return self.data_path() / "annotations"


class PretrainedModels(dg.ConfigurableResource):
    """The hub weights (or local folders) the real run starts from, by name and revision; the
    `pretrained` assets pin each to one commit. The demo trains stand-ins instead."""

    pix2pix: str = Field(default=PIX2PIX_BASE, description="InstructPix2Pix pipeline (hub id or folder)")
    pix2pix_revision: Optional[str] = Field(default=None, description="revision; empty: the default branch")
    resnet: str = Field(default=RESNET_NAME, description="PAC-Net frame encoder (hub id or folder)")
    resnet_revision: Optional[str] = Field(default=None, description="revision; empty: the default branch")
    clip_text: str = Field(default=CLIP_NAME, description="PAC-Net text encoder + tokenizer (hub id or folder)")
    clip_text_revision: Optional[str] = Field(default=None, description="revision; empty: the default branch")


class Tracking(dg.ConfigurableResource):
    """Where the trainers log: TensorBoard files in each run's folder, or an MLflow store."""

    backend: str = Field(default="tensorboard", description=f"one of {', '.join(BACKENDS)}")
    mlflow_tracking_uri: str = Field(default="", description="e.g. sqlite:////abs/path/mlflow.db or "
                                     "http://host:5000; empty: MLflow's default")
    experiment: str = Field(default="pecn", description="MLflow experiment name")

    @classmethod
    def for_deployment(cls, deployment: Deployment) -> "Tracking":
        """The deployment's tracking backend and MLflow store."""
        return cls(backend=deployment.tracking, mlflow_tracking_uri=deployment.mlflow_tracking_uri)

    def for_run(self, run_name: str, tags: Mapping[str, str]) -> TrackingConfig:
        """The trainer's tracking config of one Dagster step, tagged (run id, partition, ...)."""
        return TrackingConfig(backend=self.backend, experiment=self.experiment, run_name=run_name,
                              mlflow_tracking_uri=self.mlflow_tracking_uri or None, tags=dict(tags))
