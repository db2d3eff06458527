"""One way to make an accelerate `Accelerator` in a process that may train several models."""

from __future__ import annotations

from typing import Any


def make_accelerator(**kwargs: Any):
    """`Accelerator(**kwargs)`; accelerate keeps process-wide state, so when an earlier run in this
    process chose another precision or device, that state is reset first (private API:
    `AcceleratorState._reset_state`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(**kwargs)
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(**kwargs)
