"""Atomic writes and file hashing: a crash mid-write never leaves a file a later run trusts.

A model folder is hashed as a manifest, {relative path: sha256} of every file a loader may read,
and one sha over it; paths with a part starting with "." (temp files, markers, caches) and model
cards (README.md, added to older folders on reuse) are left out.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from pecn_ml.utils.processes import host_tag, process_alive, start_ticks

# a temp folder whose writer cannot be checked (another machine) is stale only after this long
UNCHECKED_STALE_AFTER_S = 24 * 3600
_WRITER = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d*)-")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_EXCLUDED_NAMES = frozenset({"README.md"})   # model cards; see the module docstring


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


def try_flock(path: str | os.PathLike, mode: int = 0o666) -> Optional[int]:
    """An fd holding an exclusive flock on `path` (created with `mode`), or None when another open
    file holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as e:
        os.close(fd)
        if isinstance(e, BlockingIOError):
            return None
        raise
    return fd


def owned_prefix(path: str | os.PathLike) -> str:
    """`.{name}.tmp-{host}-{pid}-{start}-`: the name prefix of a temp folder of `path` that names
    this process as its writer (`clean_stale_tmp_dirs` removes it once the writer is gone)."""
    pid = os.getpid()
    return f".{Path(path).name}.tmp-{host_tag()}-{pid}-{start_ticks(pid)}-"


@contextmanager
def owned_tmp_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch folder beside `path`, named after this process, removed when the block ends; one
    left by a killed process goes at the next `clean_stale_tmp_dirs(path)`."""
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
    """Yield an empty temp folder beside `path` (an `owned_tmp_dir`); if the block succeeds it
    replaces `path` (an old `path` is moved aside first and deleted after)."""
    path = Path(path)
    with owned_tmp_dir(path) as tmp:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=owned_prefix(path) + "old-", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def clean_stale_tmp_dirs(path: str | os.PathLike,
                         unchecked_after_s: float = UNCHECKED_STALE_AFTER_S) -> list[Path]:
    """Delete the temp folders of `path` whose writer (a process of this machine) is gone; those of
    another machine or an unnamed writer only when untouched for `unchecked_after_s`. Returns them."""
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


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file; a symlink to a blob named by its sha256 (the HF cache's `blobs/<sha256>`,
    verified by huggingface_hub) is taken by that name, unread."""
    path = Path(path)
    target = Path(os.path.realpath(path))
    if path.is_symlink() and _SHA256.match(target.name):
        return target.name
    return sha256_file(target)


def in_manifest(relative: str | os.PathLike) -> bool:
    """Whether a file at this path (relative to its folder) is listed in a folder manifest."""
    parts = Path(relative).parts
    return bool(parts) and not any(p.startswith(".") for p in parts) and parts[-1] not in MANIFEST_EXCLUDED_NAMES


def folder_manifest(folder: str | os.PathLike,
                    sha_of: Callable[[Path], str] = file_sha256) -> dict[str, str]:
    """{relative POSIX path: sha256} of every file under `folder` that `in_manifest` keeps, sorted.
    FileNotFoundError when `folder` is not a folder or holds no such file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder is gone or not a folder")
    files = sorted(p for p in folder.rglob("*") if in_manifest(p.relative_to(folder)) and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no files to hash")
    return {p.relative_to(folder).as_posix(): sha_of(p) for p in files}


def manifest_sha256(files: Mapping[str, str]) -> str:
    """The one sha256 of a folder manifest (`sha256_json` of {relative path: sha256})."""
    return sha256_json(dict(files))


def manifest_difference(recorded: Mapping[str, str], actual: Mapping[str, str]) -> Optional[str]:
    """The first file (in path order) that differs between two manifests, in words; None if equal."""
    for rel in sorted(set(recorded) | set(actual)):
        if rel not in actual:
            return f"{rel} is missing"
        if rel not in recorded:
            return f"{rel} was added (not in the recorded manifest)"
        if recorded[rel] != actual[rel]:
            return f"{rel} changed (sha256 {actual[rel][:12]} != {recorded[rel][:12]})"
    return None


class ManifestMismatch(RuntimeError):
    """A folder's files are not those of its recorded manifest; the message names the file."""


def check_manifest(folder: str | os.PathLike, sha256: str, recorded: Mapping[str, str],
                   manifest_of: Callable[[Path], Mapping[str, str]] = folder_manifest) -> dict[str, str]:
    """The folder's manifest (`manifest_of(folder)`) if it hashes to `sha256`; else ManifestMismatch
    naming the first file that differs from `recorded` (the manifest stored with the sha)."""
    folder = Path(folder)
    try:
        actual = dict(manifest_of(folder))
    except FileNotFoundError as e:
        raise ManifestMismatch(f"{e} (recorded manifest sha256 {sha256[:12]})") from None
    got = manifest_sha256(actual)
    if got == sha256:
        return actual
    if manifest_sha256(recorded) != sha256:
        raise ManifestMismatch(f"{folder}: changed since it was recorded (manifest sha256 {got[:12]} != "
                               f"{sha256[:12]}; no recorded file list matches that sha to name the file)")
    what = manifest_difference(recorded, actual)
    raise ManifestMismatch(f"{folder}: {what}; the folder changed since it was recorded (manifest sha256 "
                           f"{got[:12]} != {sha256[:12]})")
