"""The deployment: every choice the environment makes, read once, here.

`Deployment.from_env(os.environ)` is the one reader of the variables below (tests/test_settings.py
enforces it); every other module receives a `Deployment` or its values. Unset or empty means the
default.

| variable | meaning (default) |
|---|---|
| PECN_PROFILE | demo, full, smoke or rehearsal (demo) |
| PECN_SEEDS | training seeds to register, e.g. "0,1,2" (the profile's pix2pix seed) |
| PECN_DATA_DIR, PECN_OUTPUTS_DIR, PECN_RESULTS_DIR | folders (the profile's) |
| PECN_ARTIFACTS_DIR | the artifact I/O manager's JSON handles ({outputs}/_artifacts) |
| PECN_TRACKING | tensorboard, mlflow or none (tensorboard) |
| MLFLOW_TRACKING_URI | with mlflow, e.g. sqlite:////abs/mlflow.db (MLflow's own) |
| PECN_GPU_DEVICES | devices GPU steps claim, indices such as "0,1"; "" none (every visible CUDA device) |
| PECN_GPU_LOCK_DIR | the device locks ($DAGSTER_HOME/gpu_locks) |
| PECN_TRAIN_PROCESSES | training processes (= GPUs) per training step (1) |
| PECN_GPU_POOL_LIMIT | the `gpu` pool's limit (claimable devices // PECN_TRAIN_PROCESSES) |
| PECN_ALLOW_CPU | 1/true/yes/on: GPU steps of the full profile may run on the CPU (off) |
| PECN_SWEEP_CRON | the weekly backfill's cron ("0 3 * * 6") |
| PECN_EXECUTOR | multiprocess, in_process or k8s (multiprocess) |
| PECN_AUTOMATION | off/0/false/no: the automation sensor starts stopped (on) |
| PECN_K8S_GPU_NODE_SELECTOR | JSON object: node selector of GPU step pods (none) |
| PECN_K8S_GPU_TOLERATIONS | JSON list: tolerations of GPU step pods (none) |
| PECN_K8S_GPU_CPU, PECN_K8S_GPU_MEMORY | requests of a GPU step pod ("4", "24Gi") |
| DAGSTER_HOME | the Dagster instance (Dagster's own variable; read here for the lock folder) |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from pecn_ml.utils.gpu_devices import parse_device_indices

DEFAULT_SWEEP_CRON = "0 3 * * 6"            # Saturdays 03:00 UTC
EXECUTORS = ("multiprocess", "in_process", "k8s")
TRACKING_BACKENDS = ("tensorboard", "mlflow", "none")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"off", "0", "false", "no"}


def _text(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def _positive(env: Mapping[str, str], name: str, unset: str = "") -> Optional[int]:
    text = _text(env, name)
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}={text!r}: expected a positive integer{unset}")
    return int(text)


def _json(env: Mapping[str, str], name: str, expected: type) -> Any:
    text = _text(env, name)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"environment variable {name} is not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, expected):
        raise ValueError(f"environment variable {name} must be a JSON {expected.__name__}, "
                         f"got {type(value).__name__}: {text!r}")
    return value


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1, 2" -> (0, 1, 2); a clear error for anything else."""
    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise ValueError(f"PECN_SEEDS={text!r}: expected comma-separated integers, e.g. 0,1,2") from None


@dataclass(frozen=True)
class Deployment:
    """One deployment's choices (the module's table); `from_env` builds it, tests build it directly."""

    profile: str = "demo"
    seeds: tuple[int, ...] = ()                 # () : the profile's pix2pix seed
    data_dir: str = ""                          # "" : the profile's folder
    outputs_dir: str = ""
    results_dir: str = ""
    artifacts_dir: str = ""                     # "" : {outputs}/_artifacts
    tracking: str = "tensorboard"
    mlflow_tracking_uri: str = ""
    gpu_devices: Optional[str] = None           # None: every visible CUDA device
    gpu_lock_dir: str = ""                      # "" : {dagster_home}/gpu_locks
    train_processes: int = 1
    gpu_pool_limit: Optional[int] = None        # None: sized to the machine
    allow_cpu: bool = False
    sweep_cron: str = DEFAULT_SWEEP_CRON
    executor: str = "multiprocess"
    automation: bool = True
    k8s_gpu_node_selector: Optional[Mapping[str, str]] = field(default=None, hash=False)
    k8s_gpu_tolerations: Optional[tuple[Mapping[str, Any], ...]] = field(default=None, hash=False)
    k8s_gpu_cpu: str = "4"
    k8s_gpu_memory: str = "24Gi"
    dagster_home: str = ""

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"PECN_EXECUTOR={self.executor!r}: expected one of {', '.join(EXECUTORS)}")
        if self.tracking not in TRACKING_BACKENDS:
            raise ValueError(f"PECN_TRACKING={self.tracking!r}: expected one of {', '.join(TRACKING_BACKENDS)}")
        if self.train_processes < 1:
            raise ValueError(f"PECN_TRAIN_PROCESSES={self.train_processes}: expected a positive integer")
        if self.gpu_devices is not None:
            parse_device_indices(self.gpu_devices, "PECN_GPU_DEVICES")
        selector = self.k8s_gpu_node_selector
        if selector is not None and not all(isinstance(v, str) for v in selector.values()):
            raise ValueError(f"PECN_K8S_GPU_NODE_SELECTOR: node selector values must be strings: {selector}")
        if self.k8s_gpu_tolerations is not None and not all(isinstance(t, dict) for t in self.k8s_gpu_tolerations):
            raise ValueError(f"PECN_K8S_GPU_TOLERATIONS: every toleration must be a JSON object: "
                             f"{list(self.k8s_gpu_tolerations)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Deployment":
        """The deployment the environment `env` (e.g. `os.environ`) chooses; bad values fail here,
        naming the variable."""
        allow = _text(env, "PECN_ALLOW_CPU").lower()
        tolerations = _json(env, "PECN_K8S_GPU_TOLERATIONS", list)
        return cls(
            profile=_text(env, "PECN_PROFILE") or "demo",
            seeds=parse_seeds(_text(env, "PECN_SEEDS")),
            data_dir=_text(env, "PECN_DATA_DIR"), outputs_dir=_text(env, "PECN_OUTPUTS_DIR"),
            results_dir=_text(env, "PECN_RESULTS_DIR"), artifacts_dir=_text(env, "PECN_ARTIFACTS_DIR"),
            tracking=_text(env, "PECN_TRACKING") or "tensorboard",
            mlflow_tracking_uri=_text(env, "MLFLOW_TRACKING_URI"),
            gpu_devices=env.get("PECN_GPU_DEVICES"),
            gpu_lock_dir=_text(env, "PECN_GPU_LOCK_DIR"),
            train_processes=_positive(env, "PECN_TRAIN_PROCESSES") or 1,
            gpu_pool_limit=_positive(env, "PECN_GPU_POOL_LIMIT", " (or unset: automatic)"),
            allow_cpu=allow in _TRUE,
            sweep_cron=_text(env, "PECN_SWEEP_CRON") or DEFAULT_SWEEP_CRON,
            executor=_text(env, "PECN_EXECUTOR").lower() or "multiprocess",
            automation=_text(env, "PECN_AUTOMATION").lower() not in _FALSE,
            k8s_gpu_node_selector=_json(env, "PECN_K8S_GPU_NODE_SELECTOR", dict),
            k8s_gpu_tolerations=tuple(tolerations) if tolerations is not None else None,
            k8s_gpu_cpu=_text(env, "PECN_K8S_GPU_CPU") or "4",
            k8s_gpu_memory=_text(env, "PECN_K8S_GPU_MEMORY") or "24Gi",
            dagster_home=_text(env, "DAGSTER_HOME"),
        )

    def lock_dir(self, outputs: Path) -> Path:
        """Where the device locks live: PECN_GPU_LOCK_DIR, else $DAGSTER_HOME/gpu_locks, else
        {outputs}/gpu_locks."""
        if self.gpu_lock_dir:
            return Path(self.gpu_lock_dir).absolute()
        return (Path(self.dagster_home) if self.dagster_home else Path(outputs)).absolute() / "gpu_locks"
