"""Fail fast when a step that needs a GPU finds none, instead of training for days on the CPU;
and say which torch build is installed (`python -m pecn_ml.utils.cuda`, printed by `make setup`)."""

from __future__ import annotations

import os


class CudaRequiredError(RuntimeError):
    """A step of the full profile needs CUDA and none is visible."""


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
    """"cuda" when usable; else "cpu" if `opt_in_cpu`, or `CudaRequiredError` naming `what`, why
    there is no GPU and how to opt in to the CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if opt_in_cpu:
        return "cpu"
    raise CudaRequiredError(
        f"{what} needs a CUDA GPU, but none is visible: {why_no_cuda()}. Run it on a GPU machine "
        "(or a GPU pod), or set PECN_ALLOW_CPU=1 to run it on the CPU anyway (very slow at full size).")


def torch_build() -> str:
    """One line: the installed torch, CPU or CUDA build, and the GPUs it sees."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__}: CPU build (no CUDA)"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    seen = (f"{n} GPU{'s' if n != 1 else ''} visible ({torch.cuda.get_device_name(0)})" if n
            else f"no GPU visible ({why_no_cuda()})")
    return f"torch {torch.__version__}: CUDA {torch.version.cuda} build, {seen}"


if __name__ == "__main__":
    print(torch_build())
