"""Which failures a retry cannot fix: a full disk, a file that no longer hashes to its recorded
sha256 (preemption, a killed process, a busy device a retry fixes). A training child prints
`NOT_RETRIED_MARKER` and the reason before it fails so, and its step fails without a retry too."""

from __future__ import annotations

import errno
from typing import Iterator, Optional

NOT_RETRIED_MARKER = "PECN-NOT-RETRIED:"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull")


class ArtifactChanged(RuntimeError):
    """A file an artifact names is missing or no longer hashes to the recorded sha256."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def permanent_reason(exc: BaseException) -> Optional[str]:
    """Why `exc` (or an exception it was raised from) cannot succeed on a retry; None if it might."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return "the disk is full"
        if any(text in str(e) for text in _DISK_FULL_TEXT):  # e.g. safetensors' IoError(StorageFull)
            return "the disk is full"
        if isinstance(e, ArtifactChanged):
            return "a file failed its sha256 verification"
    return None
