"""How GPU steps are marked: the `gpu` pool (one at a time per GPU), retries, and k8s pod resources.

The pool's limit keeps more GPU steps than GPUs from running at once, across all runs of the
instance; it is sized to the machine when the platform starts (claimable devices // training
processes per step, `pecn_assets/gpu_pool.py`), unless set explicitly. Assets without a pool
(the CPU assets) are not limited.

On Kubernetes (deploy/), `k8s_job_executor` runs each step in its own pod; the `dagster-k8s/config`
op tag below asks for one `nvidia.com/gpu` for GPU steps only (it is deep-merged over the run
launcher's settings). Optional environment variables, read when the definitions load (so set them
on the user-code deployment, whose environment reaches the run and step pods):

    PECN_K8S_GPU_NODE_SELECTOR   JSON object, e.g. {"nvidia.com/gpu.present": "true"}
    PECN_K8S_GPU_TOLERATIONS     JSON list, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                   "effect": "NoSchedule"}]
    PECN_K8S_GPU_CPU             CPU request of a GPU step pod (default "4")
    PECN_K8S_GPU_MEMORY          memory request of a GPU step pod (default "24Gi")

A failed GPU step is retried (`GPU_RETRY`): preemption, a killed training child, a device still busy
after `gpu_claim_timeout_s`; the trainers are called with `resume=True`, so a retried training step
continues from its last checkpoint instead of starting over. What a retry cannot fix fails at once
(`dg.Failure(allow_retries=False)`): bad settings, refused in the step's first lines
(`pecn_assets.configs.training_settings`), a full disk or a failed sha256 verification
(`not_retried_when_hopeless`, `pecn_ml.utils.failures`).

Which GPU: the pool says how many GPU steps run, `claimed_gpus` says which devices each one uses.
A step claims `n` devices of the machine's set (`PecnSettings.gpu_devices`, else
`PECN_GPU_DEVICES`, else every visible CUDA device; none on a CPU machine) with one file lock per
device under `PecnSettings.gpu_lock_path()` (`$DAGSTER_HOME/gpu_locks`), holds them for the step's
life, across all runs of the instance, and records them as `gpu_devices`. A killed step's locks
die with it (flock; pecn_ml/utils/gpu_devices.py). Training children get `CUDA_VISIBLE_DEVICES`
= the claim; steps that compute in their own process use `torch_device(claim)`. With the pool
limit = the number of devices, a backfill of the four ip2p_model partitions trains four variants
at once on four GPUs; a training step with K processes claims K devices and its pod asks for
`nvidia.com/gpu: K`.
"""

from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TypeVar

import dagster as dg

from pecn_ml.utils.cuda import CudaRequiredError, allow_cpu_from_env, require_cuda
from pecn_ml.utils.failures import permanent_reason
from pecn_ml.utils.gpu_devices import (CUDA_ENV, DeviceClaim, claim_devices, device_set, parse_device_indices,
                                       parse_devices)

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


def gpu_node_selector() -> Optional[dict]:
    """The node selector of GPU step pods (`PECN_K8S_GPU_NODE_SELECTOR`; None when unset)."""
    selector = _json_env(NODE_SELECTOR_ENV, dict)
    if selector is not None and not all(isinstance(v, str) for v in selector.values()):
        raise ValueError(f"{NODE_SELECTOR_ENV}: node selector values must be strings: {selector}")
    return selector


def gpu_k8s_config(gpus: int = 1) -> dict:
    """The `dagster-k8s/config` tag value of a GPU step with `gpus` GPUs (reads the PECN_K8S_GPU_*
    variables)."""
    selector = gpu_node_selector()
    tolerations = _json_env(TOLERATIONS_ENV, list)
    if tolerations is not None and not all(isinstance(t, dict) for t in tolerations):
        raise ValueError(f"{TOLERATIONS_ENV}: every toleration must be a JSON object: {tolerations}")
    resources = {
        "limits": {GPU_RESOURCE: int(gpus)},
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


def gpu_asset_args(gpus: int = 1) -> dict:
    """Keyword arguments every GPU asset passes to `@asset`: pool, retry policy, k8s GPU request
    (`gpus`: the training steps' `train_processes`)."""
    if gpus < 1:
        raise ValueError(f"a GPU step needs at least one GPU, got {gpus}")
    return {"pool": GPU_POOL, "retry_policy": GPU_RETRY,
            "op_tags": {K8S_CONFIG_TAG: gpu_k8s_config(gpus)}}


def check_cuda(settings: Any, requires_gpu: bool, what: str) -> str:
    """Fail at once (no retry) when a profile that needs CUDA sees none and the CPU was not
    allowed (`settings.allow_cpu` or PECN_ALLOW_CPU=1); else "cuda" or "cpu"."""
    import torch

    if not requires_gpu:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return require_cuda(settings.allow_cpu or allow_cpu_from_env(), what)
    except CudaRequiredError as e:
        raise dg.Failure(str(e), allow_retries=False) from None


F = TypeVar("F", bound=Callable[..., Any])


def not_retried_when_hopeless(fn: F) -> F:
    """An asset function whose failures a retry cannot fix (`pecn_ml.utils.failures`: a full disk,
    a failed sha256 verification) fail the step at once instead of consuming its retry policy."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except dg.Failure:
            raise
        except Exception as e:
            reason = permanent_reason(e)
            if reason is None:
                raise
            raise dg.Failure(f"{reason}, so the step is not retried: {type(e).__name__}: {e}",
                             allow_retries=False) from e

    return wrapper  # type: ignore[return-value]


def machine_devices(settings: Any) -> list[str]:
    """The devices GPU steps claim from: `settings.gpu_devices`, else `PECN_GPU_DEVICES`, else every
    visible CUDA device (pecn_ml.utils.gpu_devices.device_set); device indices only."""
    if settings.gpu_devices is not None:
        return parse_device_indices(settings.gpu_devices, "PecnSettings.gpu_devices")
    return device_set()


@contextmanager
def claimed_gpus(context: dg.AssetExecutionContext, settings: Any, n: int = 1) -> Iterator[DeviceClaim]:
    """Hold `n` of the machine's GPU devices for the block (an empty claim on a machine that
    offers none); logs the wait and the claim. A claim that can never be met fails without a
    retry, one that timed out (`gpu_claim_timeout_s`: the devices are busy) with one."""
    holder = {"run_id": context.run.run_id, "asset": context.asset_key.to_user_string(),
              "partition": context.partition_key if context.has_partition_key else ""}
    try:
        devices = machine_devices(settings)
    except ValueError as e:
        raise dg.Failure(str(e), allow_retries=False) from None
    try:
        with claim_devices(n, settings.gpu_lock_path(), timeout_s=settings.gpu_claim_timeout_s or None,
                           log=context.log.info, devices=devices, holder=holder) as claim:
            yield claim
    except TimeoutError as e:
        if "claim_devices" in str(e):
            raise dg.Failure(str(e)) from None
        raise
    except ValueError as e:
        if "claim_devices" in str(e):
            raise dg.Failure(str(e), allow_retries=False) from None
        raise


def torch_device(claim: DeviceClaim) -> str:
    """The torch device of a claim for work in this process: "cuda:i" for the claimed device
    (its index among this process's visible devices), "cpu" without CUDA (or simulated devices)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if not claim.devices:
        return "cuda"
    device = claim.devices[0]
    visible = os.environ.get(CUDA_ENV, "").strip()
    if visible:
        ids = parse_devices(visible, CUDA_ENV)
        if device not in ids:
            raise dg.Failure(f"claimed GPU {device} is not visible to this process ({CUDA_ENV}={visible})")
        return f"cuda:{ids.index(device)}"
    if not device.isdigit():
        raise dg.Failure(f"claimed GPU {device!r} is a UUID; set {CUDA_ENV} so it can be mapped to an index")
    return f"cuda:{device}"
