"""Data versions (sha256 strings) of the raw SSv2 inputs, for Dagster observable source assets.

`videos_version` memoises {name: [size, mtime_ns, sha256]} under `data_dir/.pecn/` (rewritten
atomically while hashing), so unchanged files are not read again; as in git's index, a file
modified less than 2 s before hashing is not memoised.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from pecn_ml.data.annotations import find_annotation_files
from pecn_ml.utils.files import sha256_file, sha256_json, write_json_atomic
from pecn_ml.utils.progress import LogFn, ProgressMeter

MEMO_DIR = ".pecn"
VIDEO_MEMO = "videos_sha256_memo.json"
VIDEO_SUFFIX = ".webm"
RACY_NS = 2_000_000_000  # files modified in the last 2 s are hashed but not memoised


def annotations_version(ann_dir: str | os.PathLike) -> str:
    """sha256 over the sha256 of labels, train, validation and test (test "absent" if missing)."""
    files = find_annotation_files(ann_dir)
    hashes = {role: (sha256_file(p) if p is not None else "absent") for role, p in asdict(files).items()}
    return sha256_json(hashes)


def _load_memo(path: Path) -> dict[str, list]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or not isinstance(raw.get("files"), dict):
        return {}
    return {k: v for k, v in raw["files"].items()
            if isinstance(v, list) and len(v) == 3 and isinstance(v[2], str)}


def videos_version(video_dir: str | os.PathLike, log: Optional[LogFn] = None, *,
                   memo_path: str | os.PathLike | None = None, flush_every_s: float = 60.0) -> str:
    """sha256 over sorted (file name, sha256) of every `*.webm` in `video_dir` (memo: `data_dir/.pecn/`)."""
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video folder {video_dir} does not exist")
    memo_path = Path(memo_path) if memo_path else video_dir.parent / MEMO_DIR / VIDEO_MEMO
    memo = _load_memo(memo_path)
    with os.scandir(video_dir) as it:
        entries = sorted((e for e in it if e.name.endswith(VIDEO_SUFFIX) and e.is_file()), key=lambda e: e.name)
    meter = ProgressMeter(f"hash videos in {video_dir}", len(entries), log, unit="files")
    new_memo: dict[str, list] = {}
    pairs: list[tuple[str, str]] = []
    hashed, last_flush = 0, time.perf_counter()
    for e in entries:
        st = e.stat()
        known = memo.get(e.name)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            sha = known[2]
        else:
            sha = sha256_file(e.path)
            hashed += 1
        if time.time_ns() - st.st_mtime_ns >= RACY_NS:  # a just-written file may change again
            new_memo[e.name] = [st.st_size, st.st_mtime_ns, sha]  # within the same mtime tick
        pairs.append((e.name, sha))
        meter.update()
        if hashed and time.perf_counter() - last_flush >= flush_every_s:
            write_json_atomic(memo_path, {"files": {**memo, **new_memo}}, indent=None)
            last_flush = time.perf_counter()
    if hashed or set(new_memo) != set(memo):
        write_json_atomic(memo_path, {"files": new_memo}, indent=None)
    if log:
        log(f"videos_version: {len(pairs)} files, {hashed} hashed, {len(pairs) - hashed} from memo")
    return sha256_json(pairs)
