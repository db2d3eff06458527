"""How GPU steps are marked and run: the `gpu` pool (one step per GPU), retries, Kubernetes pod
resources, device claims, and the CPU opt-in (docs/OPERATIONS.md has the operator's view)."""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import dagster as dg

from pecn_ml.deployment import Deployment
from pecn_ml.utils.cuda import CudaRequiredError, require_cuda
from pecn_ml.utils.failures import permanent_reason
from pecn_ml.utils.gpu_devices import CUDA_ENV, DeviceClaim, claim_devices, device_set, parse_devices

GPU_POOL = "gpu"
GPU_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"


def gpu_k8s_config(gpus: int = 1, deployment: Deployment = Deployment()) -> dict:
    """The `dagster-k8s/config` tag of a GPU step with `gpus` GPUs: the deployment's pod requests,
    node selector and tolerations."""
    resources = {"limits": {GPU_RESOURCE: int(gpus)},
                 "requests": {"cpu": deployment.k8s_gpu_cpu, "memory": deployment.k8s_gpu_memory}}
    config: dict = {"container_config": {"resources": resources}}
    pod_spec = {"node_selector": dict(deployment.k8s_gpu_node_selector or {}),
                "tolerations": [dict(t) for t in deployment.k8s_gpu_tolerations or ()]}
    if any(pod_spec.values()):
        config["pod_spec_config"] = {k: v for k, v in pod_spec.items() if v}
    return config


def gpu_asset_args(gpus: int = 1, deployment: Deployment = Deployment()) -> dict:
    """Keyword arguments every GPU asset passes to `@asset`: pool, retry policy, k8s GPU request."""
    if gpus < 1:
        raise ValueError(f"a GPU step needs at least one GPU, got {gpus}")
    return {"pool": GPU_POOL, "retry_policy": GPU_RETRY,
            "op_tags": {K8S_CONFIG_TAG: gpu_k8s_config(gpus, deployment)}}


def check_cuda(settings: Any, requires_gpu: bool, what: str) -> str:
    """"cuda" or "cpu"; fails at once (no retry) when a profile that needs CUDA sees none and
    `settings.allow_cpu` is off."""
    import torch

    if not requires_gpu:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return require_cuda(bool(settings.allow_cpu), what)
    except CudaRequiredError as e:
        raise dg.Failure(str(e), allow_retries=False) from None


F = TypeVar("F", bound=Callable[..., Any])


def not_retried_when_hopeless(fn: F) -> F:
    """Failures a retry cannot fix (a full disk, a failed sha256 check) fail the step at once."""
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


@contextmanager
def claimed_gpus(context: dg.AssetExecutionContext, settings: Any, n: int = 1,
                 profile: Any = None) -> Iterator[DeviceClaim]:
    """Hold `n` of the machine's GPU devices for the block (none on a machine without); a claim
    that can never be met fails without a retry, one that timed out with one. With a `profile`,
    `check_cuda` first (named after the asset)."""
    if profile is not None:
        check_cuda(settings, profile.requires_gpu, f"{context.asset_key.to_user_string()} (profile {profile.name})")
    holder = {"run_id": context.run.run_id, "asset": context.asset_key.to_user_string(),
              "partition": context.partition_key if context.has_partition_key else ""}
    try:
        devices = device_set(settings.gpu_devices)  # settings.gpu_devices, else every visible CUDA device
    except ValueError as e:
        raise dg.Failure(str(e), allow_retries=False) from None
    try:
        with claim_devices(n, settings.gpu_lock_path(), timeout_s=settings.gpu_claim_timeout_s or None,
                           log=context.log.info, devices=devices, holder=holder) as claim:
            yield claim
    except (TimeoutError, ValueError) as e:
        if "claim_devices" not in str(e):
            raise
        raise dg.Failure(str(e), allow_retries=isinstance(e, TimeoutError)) from None  # a wait may end; a bad ask not


def torch_device(claim: DeviceClaim) -> str:
    """The torch device of a claim in this process: "cuda:i" (its index among the visible
    devices), "cpu" without CUDA."""
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
