"""The `gpu` pool sized to the machine: limit = claimable devices // training processes per step.

When the platform starts, the `gpu` pool's limit is set in the instance (as `dagster instance
concurrency set gpu N` would) to `pool_slots(devices, train_processes)`: a 4-GPU workstation
trains four variants at once with no edits, two at once with `PECN_TRAIN_PROCESSES=2`; a CPU
machine runs one GPU step at a time. Claimable devices are the ones GPU steps claim from
(`PECN_GPU_DEVICES`, else every visible CUDA device); on Kubernetes (`PECN_EXECUTOR=k8s`), unless
`PECN_GPU_DEVICES` is set, the allocatable `nvidia.com/gpu` of the schedulable nodes that match
`PECN_K8S_GPU_NODE_SELECTOR`, counted per node (a step's K processes share one pod, one node).

Unless set explicitly, in either of two ways:
- `PECN_GPU_POOL_LIMIT=N`: the pool gets N at every start;
- a limit someone set in the instance (`dagster instance concurrency set gpu N`, or the UI): kept.
  PECN records the limit it set last (the instance's key-value store, `RECORD_KEY`); a stored
  limit that differs from that record was set by someone else. Set it back to PECN's number (or
  delete the pool's limit) to return to the automatic size.

Where it runs: `make ui` (`python -m pecn_assets.gpu_pool` before `dagster dev`), the demo
(`pecn_assets.demo`), and the `gpu_pool_size` sensor (every 5 minutes wherever the daemon runs:
`make ui`, the Kubernetes deployment), which also follows a changed machine. Until it has run,
dagster.yaml's `default_limit: 1` applies.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import dagster as dg

from pecn_assets.gpu import GPU_POOL, GPU_RESOURCE, gpu_node_selector
from pecn_ml.utils.gpu_devices import device_set, parse_devices, pool_slots

POOL_LIMIT_ENV = "PECN_GPU_POOL_LIMIT"
RECORD_KEY = "pecn/gpu_pool_limit"
SENSOR_NAME = "gpu_pool_size"
SENSOR_INTERVAL_S = 300
K8S_EXECUTOR = "k8s"             # the name of dagster_k8s.k8s_job_executor


def parse_pool_limit(text: Optional[str]) -> Optional[int]:
    """`PECN_GPU_POOL_LIMIT`: None when unset or empty, else an integer >= 1."""
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{POOL_LIMIT_ENV}={text!r}: expected a positive integer (or unset: automatic)")
    return int(text)


def k8s_gpu_counts(node_selector: Optional[Mapping[str, str]] = None, core_api: Any = None) -> list[int]:
    """Allocatable `nvidia.com/gpu` of each schedulable node matching `node_selector` (the pod's
    service account must be allowed to list nodes: deploy/k8s/gpu-pool-rbac.yaml)."""
    if core_api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        core_api = client.CoreV1Api()
    selector = ",".join(f"{k}={v}" for k, v in sorted((node_selector or {}).items())) or None
    counts = []
    for node in core_api.list_node(label_selector=selector).items:
        if node.spec is not None and node.spec.unschedulable:
            continue
        allocatable = (node.status.allocatable if node.status is not None else None) or {}
        counts.append(int(allocatable.get(GPU_RESOURCE, 0)))
    return counts


def claimable_devices(settings: Any, k8s: bool = False,
                      k8s_counts: Optional[Callable[[], Sequence[int]]] = None) -> tuple[list[int], str]:
    """(device count per machine, where they come from) of the devices GPU steps can claim:
    `settings.gpu_devices` (PECN_GPU_DEVICES), else the Kubernetes nodes' GPUs (`k8s`; `k8s_counts`
    replaces the API call in tests), else the CUDA devices this process sees."""
    if settings.gpu_devices is not None:
        return [len(parse_devices(settings.gpu_devices, "PecnSettings.gpu_devices"))], "PECN_GPU_DEVICES"
    if k8s:
        counts = list(k8s_counts() if k8s_counts is not None else k8s_gpu_counts(gpu_node_selector()))
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
    """(limit, reason, whether PECN sets it): the explicit `PECN_GPU_POOL_LIMIT`; else a limit
    stored in the instance that PECN did not set (`current` != `recorded`, not from dagster.yaml's
    default); else the automatic size."""
    if explicit is not None:
        return explicit, f"{POOL_LIMIT_ENV}={explicit}", True
    if current is not None and not current_from_default and current != recorded:
        return current, ("set explicitly in the instance (dagster instance concurrency set gpu N), kept; "
                         f"automatic would be {auto}: {why_auto}"), False
    return auto, why_auto, True


def _current_limit(instance: dg.DagsterInstance) -> tuple[Optional[int], bool]:
    for pool in instance.event_log_storage.get_pool_limits():
        if pool.name == GPU_POOL:
            return int(pool.limit), bool(pool.from_default)
    return None, False


def size_gpu_pool(instance: dg.DagsterInstance, settings: Any, *, k8s: bool = False,
                  explicit: Optional[int] = None,
                  k8s_counts: Optional[Callable[[], Sequence[int]]] = None) -> PoolDecision:
    """Set the `gpu` pool's limit of `instance` (module docstring) and say what it is and why.
    `explicit`: `PECN_GPU_POOL_LIMIT`; `settings`: the deployment's `PecnSettings` (its
    `gpu_devices` and `train_processes`)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return PoolDecision(0, "this instance's storage has no pools; nothing set")
    counts, source = claimable_devices(settings, k8s, k8s_counts)
    k = settings.train_processes
    auto = pool_slots(counts, k)
    why = f"{sum(counts)} claimable device(s) ({source}) // {k} training process(es) per step"
    current, from_default = _current_limit(instance)
    raw = instance.run_storage.get_cursor_values({RECORD_KEY}).get(RECORD_KEY)
    recorded = int(raw) if raw and raw.isdigit() else None
    limit, reason, ours = decide_limit(auto, why, explicit, current, from_default, recorded)
    if not ours:
        return PoolDecision(limit, reason)
    changed = current != limit or from_default
    if changed:
        storage.set_concurrency_slots(GPU_POOL, limit)
    if recorded != limit:
        instance.run_storage.set_cursor_values({RECORD_KEY: str(limit)})
    return PoolDecision(limit, reason, changed)


def build_gpu_pool_sensor(settings: Any, k8s: bool, explicit: Optional[int]) -> dg.SensorDefinition:
    """`gpu_pool_size`: sizes the pool on every tick (running by default; launches nothing)."""

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Keeps the gpu pool's limit at claimable devices // training processes per step "
                           "(unless set explicitly); launches nothing (pecn_assets/gpu_pool.py).")
    def gpu_pool_size(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason(size_gpu_pool(context.instance, settings, k8s=k8s, explicit=explicit).line())

    return gpu_pool_size


def main() -> int:
    """`python -m pecn_assets.gpu_pool`: size the pool of the instance at $DAGSTER_HOME (`make ui`)."""
    from pecn_assets.definitions import deployment_from_env
    from pecn_assets.jobs import pecn_executor

    deployment = deployment_from_env(os.environ)
    with dg.DagsterInstance.get() as instance:
        decision = size_gpu_pool(instance, deployment["settings"], k8s=pecn_executor().name == K8S_EXECUTOR,
                                 explicit=deployment["gpu_pool_limit"])
    print(decision.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
