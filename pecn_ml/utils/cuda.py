"""Fail fast when a step that needs a GPU finds none, instead of training for days on the CPU;
and say which torch build is installed (`python -m pecn_ml.utils.cuda`, printed by `make setup`)."""

from __future__ import annotations

import os
from typing import Mapping, Optional

ALLOW_CPU_ENV = "PECN_ALLOW_CPU"
_TRUE = {"1", "true", "yes", "on"}


class CudaRequiredError(RuntimeError):
    """A step of the full profile needs CUDA and none is visible."""


def allow_cpu_from_env(environ: Optional[Mapping[str, str]] = None) -> bool:
    """The explicit opt-in: `PECN_ALLOW_CPU=1` (also true/yes/on)."""
    env = os.environ if environ is None else environ
    return env.get(ALLOW_CPU_ENV, "").strip().lower() in _TRUE


def why_no_cuda() -> str:
    """Why torch sees no GPU, in one sentence (CPU-only build, hidden devices, no device)."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (for a CUDA build see README, 'Choosing the build')"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return "CUDA_VISIBLE_DEVICES is set but empty, which hides every GPU"
    where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU{where}: "
            "no driver, no device, or the step was not given one")


def require_cuda(opt_in_cpu: bool, what: str) -> str:
    """"cuda" when CUDA is usable; "cpu" when it is not but `opt_in_cpu` allows it; otherwise
    raise `CudaRequiredError` naming `what` (e.g. "ip2p_model (full profile)"), why there is no
    GPU, and how to opt in to the CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if opt_in_cpu:
        return "cpu"
    raise CudaRequiredError(
        f"{what} needs a CUDA GPU, but none is visible: {why_no_cuda()}. Run it on a GPU machine "
        f"(or a GPU pod), or set {ALLOW_CPU_ENV}=1 to run it on the CPU anyway (very slow at full size).")


def torch_build() -> str:
    """One line: the installed torch, whether it is the CPU or a CUDA build (and which CUDA), and
    the GPUs it sees, e.g. "torch 2.13.0+cu128: CUDA 12.8 build, 1 GPU visible (NVIDIA H100 80GB HBM3)"."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__}: CPU build (no CUDA)"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    seen = (f"{n} GPU{'s' if n != 1 else ''} visible ({torch.cuda.get_device_name(0)})" if n
            else f"no GPU visible ({why_no_cuda()})")
    return f"torch {torch.__version__}: CUDA {torch.version.cuda} build, {seen}"


if __name__ == "__main__":
    print(torch_build())
