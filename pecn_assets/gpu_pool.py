"""The `gpu` pool sized to the machine: limit = claimable devices // training processes per step,
unless set explicitly (the deployment's `gpu_pool_limit`, or a limit someone else set in the
instance: kept). Run by `make ui`, the demo and the `gpu_pool_size` sensor."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import dagster as dg

from pecn_assets.gpu import GPU_POOL, GPU_RESOURCE
from pecn_assets.resources import PecnSettings
from pecn_ml.deployment import Deployment
from pecn_ml.utils.gpu_devices import device_set, pool_slots

RECORD_KEY = "pecn/gpu_pool_limit"
SENSOR_NAME = "gpu_pool_size"
SENSOR_INTERVAL_S = 300
K8S_EXECUTOR = "k8s"             # the name of dagster_k8s.k8s_job_executor


def k8s_gpu_counts(node_selector: Optional[Mapping[str, str]] = None, core_api: Any = None) -> list[int]:
    """Allocatable `nvidia.com/gpu` of each schedulable node matching `node_selector` (the pod's
    service account must be allowed to list nodes: deploy/k8s/gpu-pool-rbac.yaml)."""
    if core_api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        core_api = client.CoreV1Api()
    selector = ",".join(f"{k}={v}" for k, v in sorted((node_selector or {}).items())) or None
    nodes = [n for n in core_api.list_node(label_selector=selector).items if not (n.spec and n.spec.unschedulable)]
    return [int(((n.status and n.status.allocatable) or {}).get(GPU_RESOURCE, 0)) for n in nodes]


def claimable_devices(settings: Any, deployment: Deployment = Deployment(),
                      k8s_counts: Optional[Callable[[], Sequence[int]]] = None) -> tuple[list[int], str]:
    """(device count per machine, their source): `settings.gpu_devices`, else on Kubernetes the
    nodes' GPUs (`k8s_counts` replaces the API call in tests), else the visible CUDA devices."""
    if settings.gpu_devices is not None:
        return [len(device_set(settings.gpu_devices))], "configured gpu_devices"
    if deployment.executor == K8S_EXECUTOR:
        counts = list(k8s_counts() if k8s_counts is not None else k8s_gpu_counts(deployment.k8s_gpu_node_selector))
        return counts, f"nvidia.com/gpu of {len(counts)} Kubernetes node(s)"
    return [len(device_set())], "visible CUDA devices"


@dataclass(frozen=True)
class PoolDecision:
    """What the pool's limit is after sizing, and why."""

    limit: int
    reason: str
    changed: bool = False

    def line(self) -> str:
        return f"gpu pool limit {self.limit}{' (set now)' if self.changed else ''}: {self.reason}"


def decide_limit(auto: int, why_auto: str, explicit: Optional[int], current: Optional[int],
                 current_from_default: bool, recorded: Optional[int]) -> tuple[int, str, bool]:
    """(limit, reason, whether PECN sets it): `explicit`; else a limit stored in the instance that
    PECN did not set (`current` != `recorded`, not dagster.yaml's default); else the automatic size."""
    if explicit is not None:
        return explicit, f"PECN_GPU_POOL_LIMIT={explicit}", True
    if current is not None and not current_from_default and current != recorded:
        return current, ("set explicitly in the instance (dagster instance concurrency set gpu N), kept; "
                         f"automatic would be {auto}: {why_auto}"), False
    return auto, why_auto, True


def _current_limit(instance: dg.DagsterInstance) -> tuple[Optional[int], bool]:
    for pool in instance.event_log_storage.get_pool_limits():
        if pool.name == GPU_POOL:
            return int(pool.limit), bool(pool.from_default)
    return None, False


def size_gpu_pool(instance: dg.DagsterInstance, settings: Any, deployment: Deployment = Deployment(),
                  k8s_counts: Optional[Callable[[], Sequence[int]]] = None) -> PoolDecision:
    """Set the `gpu` pool's limit of `instance` (module docstring) and say what it is and why;
    `settings` gives the devices and training processes, `deployment` the executor and explicit limit."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return PoolDecision(0, "this instance's storage has no pools; nothing set")
    counts, source = claimable_devices(settings, deployment, k8s_counts)
    k = settings.train_processes
    auto = pool_slots(counts, k)
    why = f"{sum(counts)} claimable device(s) ({source}) // {k} training process(es) per step"
    current, from_default = _current_limit(instance)
    raw = instance.run_storage.get_cursor_values({RECORD_KEY}).get(RECORD_KEY)
    recorded = int(raw) if raw and raw.isdigit() else None
    limit, reason, ours = decide_limit(auto, why, deployment.gpu_pool_limit, current, from_default, recorded)
    if not ours:
        return PoolDecision(limit, reason)
    changed = current != limit or from_default
    if changed:
        storage.set_concurrency_slots(GPU_POOL, limit)
    if recorded != limit:
        instance.run_storage.set_cursor_values({RECORD_KEY: str(limit)})
    return PoolDecision(limit, reason, changed)


def build_gpu_pool_sensor(settings: Any, deployment: Deployment) -> dg.SensorDefinition:
    """`gpu_pool_size`: sizes the pool on every tick (running by default; launches nothing)."""

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Keeps the gpu pool's limit at claimable devices // training processes per step "
                           "(unless set explicitly); launches nothing (pecn_assets/gpu_pool.py).")
    def gpu_pool_size(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason(size_gpu_pool(context.instance, settings, deployment).line())

    return gpu_pool_size


def main() -> int:
    """`python -m pecn_assets.gpu_pool`: size the pool of the instance at $DAGSTER_HOME (`make ui`)."""
    deployment = Deployment.from_env(os.environ)
    settings = PecnSettings.for_deployment(deployment)
    with dg.DagsterInstance.get() as instance:
        decision = size_gpu_pool(instance, settings, deployment)
    print(decision.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
