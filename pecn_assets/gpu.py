"""How GPU steps are marked: the `gpu` pool (one at a time per GPU), retries, and k8s pod resources.

On a workstation the pool limit (`concurrency.pools.default_limit` in dagster_home/dagster.yaml,
set it to the number of GPUs) keeps more GPU steps than GPUs from running at once, across all runs
of the instance. Assets without a pool (the CPU assets) are not limited.

On Kubernetes (deploy/), `k8s_job_executor` runs each step in its own pod; the `dagster-k8s/config`
op tag below asks for one `nvidia.com/gpu` for GPU steps only (it is deep-merged over the run
launcher's settings). Optional environment variables, read when the definitions load (so set them
on the user-code deployment, whose environment reaches the run and step pods):

    PECN_K8S_GPU_NODE_SELECTOR   JSON object, e.g. {"nvidia.com/gpu.present": "true"}
    PECN_K8S_GPU_TOLERATIONS     JSON list, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                   "effect": "NoSchedule"}]
    PECN_K8S_GPU_CPU             CPU request of a GPU step pod (default "4")
    PECN_K8S_GPU_MEMORY          memory request of a GPU step pod (default "24Gi")

A failed GPU step is retried (`GPU_RETRY`); the trainers are called with `resume=True`, so a retried
training step continues from its last checkpoint instead of starting over.
"""

from __future__ import annotations

import json
import os
from typing import Any

import dagster as dg

GPU_POOL = "gpu"
GPU_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"

NODE_SELECTOR_ENV = "PECN_K8S_GPU_NODE_SELECTOR"
TOLERATIONS_ENV = "PECN_K8S_GPU_TOLERATIONS"
CPU_ENV = "PECN_K8S_GPU_CPU"
MEMORY_ENV = "PECN_K8S_GPU_MEMORY"


def _json_env(name: str, expected: type) -> Any:
    """The JSON value of environment variable `name` (None when unset or empty)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name} is not valid JSON ({e}): {raw!r}") from None
    if not isinstance(value, expected):
        raise ValueError(f"environment variable {name} must be a JSON {expected.__name__}, "
                         f"got {type(value).__name__}: {raw!r}")
    return value


def gpu_k8s_config() -> dict:
    """The `dagster-k8s/config` tag value of a GPU step (reads the PECN_K8S_GPU_* variables)."""
    selector = _json_env(NODE_SELECTOR_ENV, dict)
    tolerations = _json_env(TOLERATIONS_ENV, list)
    if selector is not None and not all(isinstance(v, str) for v in selector.values()):
        raise ValueError(f"{NODE_SELECTOR_ENV}: node selector values must be strings: {selector}")
    if tolerations is not None and not all(isinstance(t, dict) for t in tolerations):
        raise ValueError(f"{TOLERATIONS_ENV}: every toleration must be a JSON object: {tolerations}")
    resources = {
        "limits": {GPU_RESOURCE: 1},
        "requests": {"cpu": os.environ.get(CPU_ENV, "4"), "memory": os.environ.get(MEMORY_ENV, "24Gi")},
    }
    config: dict = {"container_config": {"resources": resources}}
    pod_spec: dict = {}
    if selector:
        pod_spec["node_selector"] = selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return config


def gpu_asset_args() -> dict:
    """Keyword arguments every GPU asset passes to `@asset`: pool, retry policy, k8s GPU request."""
    return {"pool": GPU_POOL, "retry_policy": GPU_RETRY,
            "op_tags": {K8S_CONFIG_TAG: gpu_k8s_config()}}
