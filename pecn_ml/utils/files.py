"""Atomic writes and file hashing: a crash mid-write never leaves a file a later run trusts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pecn_ml.utils.processes import host_tag, process_alive, start_ticks

# A temp folder of `atomic_dir` whose writer cannot be checked (another machine sharing the
# folder, or a name from before writers were named) is stale only after this long.
UNCHECKED_STALE_AFTER_S = 24 * 3600
_WRITER = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d*)-")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the same folder; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def owned_prefix(path: str | os.PathLike) -> str:
    """`.{name}.tmp-{host}-{pid}-{start}-`: the name prefix of a temp folder of `path` that names
    this process as its writer (`clean_stale_tmp_dirs` removes it once the writer is gone)."""
    pid = os.getpid()
    return f".{Path(path).name}.tmp-{host_tag()}-{pid}-{start_ticks(pid)}-"


@contextmanager
def owned_tmp_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch folder beside `path`, named after this process and removed when the block ends;
    one left by a killed process is removed by the next `owned_tmp_dir` of `path` (or any
    `clean_stale_tmp_dirs(path)`), never one of a process that still runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp_dirs(path)
    tmp = Path(tempfile.mkdtemp(prefix=owned_prefix(path), dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; if the block succeeds it replaces `path` (an old
    `path` is moved aside first and deleted after), otherwise it is removed.

    Temp folders are named `.{name}.tmp-{host}-{pid}-{start}-*` after their writer; a writer killed
    before its rename leaves one, which the next `atomic_dir` of `path` removes (see
    `clean_stale_tmp_dirs`), never one of a writer that still runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp_dirs(path)
    prefix = owned_prefix(path)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix + "old-", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_stale_tmp_dirs(path: str | os.PathLike,
                         unchecked_after_s: float = UNCHECKED_STALE_AFTER_S) -> list[Path]:
    """Delete the `atomic_dir` temp folders of `path` whose writer is gone; return them.

    Gone: a writer of this machine whose process no longer runs (or whose pid now belongs to a
    later process). A folder of another machine, or with an unnamed writer, is deleted only when
    untouched for `unchecked_after_s`. A folder of a running writer is never deleted."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix, host, now = f".{path.name}.tmp-", host_tag(), time.time()
    removed = []
    for p in path.parent.iterdir():
        if not (p.name.startswith(prefix) and p.is_dir()):
            continue
        writer = _WRITER.match(p.name[len(prefix):])
        if writer and writer["host"] == host:
            stale = not process_alive(int(writer["pid"]), writer["start"])
        else:
            try:
                stale = now - p.stat().st_mtime > unchecked_after_s
            except FileNotFoundError:  # its writer just renamed or removed it
                continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write `obj` as UTF-8 JSON to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=indent)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form (sorted keys)."""
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()
