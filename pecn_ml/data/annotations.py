"""SSv2 annotation files (`data_dir/annotations/`, official or short names): find, validate,
filter to the four tasks (train_filtered.json, val_filtered.json, val_filtered_backforth.json:
the SSv2 fields + "task") and sample with a fixed seed. An entry's class is its template without
brackets, looked up exactly in labels; its task, by case-insensitive match in `tasks.json`."""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from pecn_ml.data.templates import BACKFORTH_TASKS, BASIC_TASKS, label_key_of, load_task_map, task_of_label_key
from pecn_ml.utils.files import write_json_atomic
from pecn_ml.utils.progress import LogFn
from pecn_ml.variants import EVAL_SETS, TRAIN_FILE

ROLES = ("labels", "train", "validation", "test")   # files something-something-v2-{role}.json or {role}.json
SSV2_FIELDS = ("id", "label", "template", "placeholders")
FILTERED_FIELDS = SSV2_FIELDS + ("task",)

TRAIN_FILTERED = TRAIN_FILE                       # "train_filtered.json"
MAX_EXAMPLES = 5                                  # rejected examples kept per reason

_ID_RE = re.compile(r"0|[1-9][0-9]{0,19}", re.ASCII)


class AnnotationError(ValueError):
    """A malformed annotation file or entry; the message names the file and the entry."""


def validate_video_id(s: Any) -> str:
    """`s` if it is a plain ASCII decimal id without leading zeros ("74225"), else ValueError:
    the id becomes a file name (`videos/{id}.webm`), so nothing else may pass."""
    if not isinstance(s, str):
        raise ValueError(f"video id must be a string of decimal digits, got {type(s).__name__} {s!r}")
    if not _ID_RE.fullmatch(s):
        raise ValueError(f"video id must be plain ASCII decimal digits without leading zeros, got {s!r}")
    return s


@dataclass(frozen=True)
class AnnotationFiles:
    """Paths of the SSv2 annotation files; `test` is None when absent (filtering never reads it)."""
    labels: Path
    train: Path
    validation: Path
    test: Optional[Path]


def find_annotation_files(ann_dir: str | os.PathLike, require_test: bool = False) -> AnnotationFiles:
    """Locate labels/train/validation/test under `ann_dir` by official or short name;
    FileNotFoundError names every missing role, AnnotationError two different files for one."""
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"annotation folder {ann_dir} does not exist")
    found: dict[str, Optional[Path]] = {}
    missing = []
    for role in ROLES:
        official, short = ann_dir / f"something-something-v2-{role}.json", ann_dir / f"{role}.json"
        present = [p for p in (official, short) if p.is_file()]
        if len(present) == 2 and not official.samefile(short):
            raise AnnotationError(f"ambiguous {role} annotations in {ann_dir}: both {official.name} and "
                                  f"{short.name} exist and differ; remove one")
        found[role] = present[0] if present else None
        if not present and (role != "test" or require_test):
            missing.append(f"{role} ({official.name} or {short.name})")
    if missing:
        raise FileNotFoundError(f"missing SSv2 annotation file(s) in {ann_dir}: {', '.join(missing)}")
    return AnnotationFiles(**found)  # type: ignore[arg-type]


def read_json_file(path: str | os.PathLike) -> Any:
    """Parse a UTF-8 JSON file (BOM and CRLF tolerated); AnnotationError names the file on failure."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file does not exist") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def load_labels(path: str | os.PathLike) -> dict[str, int]:
    """labels.json -> {label key: index}; every key a string, every value a decimal string."""
    raw = read_json_file(path)
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected a JSON object {{label key: index}}, got {type(raw).__name__}")
    if not raw:
        raise AnnotationError(f"{path}: no labels")
    out: dict[str, int] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]+", value, re.ASCII):
            raise AnnotationError(f"{path}: label {key!r} has index {value!r}, expected a decimal string")
        out[key] = int(value)
    return out


def _entry_name(path: Path, index: int, entry: Any) -> str:
    vid = entry.get("id") if isinstance(entry, dict) else None
    return f"{path}: entry {index} (id={vid!r})"


class _Rejected(Exception):
    """An entry-level problem: `reason` is the short category, str(self) the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _check_fields(entry: Any, fields: tuple[str, ...]) -> str:
    """The valid id of an entry with string `fields` and a placeholders list; else _Rejected."""
    if not isinstance(entry, dict):
        raise _Rejected("not an object", f"expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in fields if k not in entry]
    if missing:
        raise _Rejected("missing field", f"missing field(s) {missing}")
    for k in fields:
        if k != "placeholders" and not isinstance(entry[k], str):
            raise _Rejected("wrong type", f"field {k!r} must be a string, got {type(entry[k]).__name__}")
    ph = entry["placeholders"]
    if not isinstance(ph, list) or not all(isinstance(p, str) for p in ph):
        raise _Rejected("wrong type", "field 'placeholders' must be a list of strings")
    try:
        return validate_video_id(entry["id"])
    except ValueError as e:
        raise _Rejected("invalid id", str(e)) from None


def _check_entry(entry: Any, labels: Mapping[str, int]) -> tuple[str, str]:
    """Validate one train/validation entry; return (id, label key) or raise _Rejected."""
    vid = _check_fields(entry, SSV2_FIELDS)
    key = label_key_of(entry["template"])
    if key not in labels:
        raise _Rejected("template not in labels",
                        f"template {entry['template']!r} (class {key!r}) is not a class of the labels file")
    return vid, key


def _load_list(path: Path) -> list:
    raw = read_json_file(path)
    if not isinstance(raw, list):
        raise AnnotationError(f"{path}: expected a JSON array of entries, got {type(raw).__name__}")
    return raw


@dataclass(frozen=True)
class FilterConfig:
    """How to filter and sample SSv2 to the four tasks (defaults = the research setup)."""
    train_per_task: int = 2000
    val_per_task: int = 100
    seed: int = 42
    task_map: Mapping[str, tuple[str, ...]] = field(default_factory=load_task_map)  # task -> label keys
    basic_tasks: tuple[str, ...] = BASIC_TASKS
    backforth_tasks: tuple[str, ...] = BACKFORTH_TASKS
    on_error: str = "raise"  # "raise": first bad entry raises AnnotationError; "skip": count & drop

    def __post_init__(self):
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.train_per_task < 0 or self.val_per_task < 0:
            raise ValueError("train_per_task and val_per_task must be >= 0")
        unknown = [t for t in self.basic_tasks + self.backforth_tasks if t not in self.task_map]
        if unknown:
            raise ValueError(f"tasks {unknown} are not in the task map (tasks: {sorted(self.task_map)})")
        task_of_label_key(dict(self.task_map))  # raises if a key is in two tasks


@dataclass(frozen=True)
class FilterResult:
    """What `filter_annotations` did. Keys of `outputs`/`entries`: the output file names."""
    counts: dict[str, dict[str, int]]         # {split: {task: n kept after sampling}}
    available: dict[str, dict[str, int]]      # {split: {task: n before sampling}}
    rejected: dict[str, int]                  # {reason: n} (only non-zero with on_error="skip")
    rejected_examples: dict[str, list[str]]   # {reason: first MAX_EXAMPLES "file: entry i (id=..): detail"}
    outputs: dict[str, Path]                  # {file name: path}
    entries: dict[str, list[dict]]            # {file name: entries written}


def _sample(ids_entries: list[tuple[int, dict]], n: int, seed: int, split: str, task: str) -> list[dict]:
    """Seeded sample of `n` entries, independent of input order (sorted by int id first)."""
    pool = sorted(ids_entries, key=lambda x: x[0])
    if len(pool) > n:
        pool = random.Random(f"{seed}:{split}:{task}").sample(pool, n)
    return [e for _, e in pool]


def _read_split(path: Path, labels: Mapping[str, int], config: FilterConfig, exclude: set[str],
                reject: Callable[[str, "_Rejected"], None]) -> tuple[dict[str, list[tuple[int, dict]]], set[str]]:
    """({task: [(int id, filtered entry)]}, ids) of one split; ids in `exclude` are rejected."""
    task_of = task_of_label_key(dict(config.task_map))
    by_task: dict[str, list[tuple[int, dict]]] = {t: [] for t in config.task_map}
    ids: set[str] = set()
    for i, entry in enumerate(_load_list(path)):
        try:
            vid, key = _check_entry(entry, labels)
            if vid in ids:
                raise _Rejected("duplicate id", f"id {vid} appears more than once in {path.name}")
            if vid in exclude:
                raise _Rejected("id also in validation", f"id {vid} is also a validation id")
        except _Rejected as r:
            reject(_entry_name(path, i, entry), r)
            continue
        ids.add(vid)
        task = task_of.get(key.lower())
        if task is not None:
            by_task[task].append((int(vid), {**{k: entry[k] for k in SSV2_FIELDS}, "task": task}))
    return by_task, ids


def filter_annotations(data_dir: str | os.PathLike, config: FilterConfig | None = None,
                       log: Optional[LogFn] = None) -> FilterResult:
    """Filter train/validation to the configured tasks, sample per task, write the three files,
    each sorted by integer id (so never dependent on the order of the input files)."""
    config = config or FilterConfig()
    ann_dir = Path(data_dir) / "annotations"
    files = find_annotation_files(ann_dir)
    labels = load_labels(files.labels)
    lower_labels = {k.lower() for k in labels}
    unmatched = [f"{task}: {key!r}" for task, keys in config.task_map.items() for key in keys
                 if key.lower() not in lower_labels]
    if unmatched:
        raise AnnotationError(f"{files.labels}: task map key(s) match no class in labels: {unmatched}")
    rejected: dict[str, int] = {}
    examples: dict[str, list[str]] = {}

    def reject(where: str, r: _Rejected) -> None:
        if config.on_error == "raise":
            raise AnnotationError(f"{where}: {r}")
        rejected[r.reason] = rejected.get(r.reason, 0) + 1
        ex = examples.setdefault(r.reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(f"{where}: {r}")

    # validation first, so a train entry whose id is also a validation id can be refused (leakage)
    val, val_ids = _read_split(files.validation, labels, config, set(), reject)
    kept = {"validation": val, "train": _read_split(files.train, labels, config, val_ids, reject)[0]}
    available = {split: {t: len(v) for t, v in kept[split].items()} for split in ("validation", "train")}
    plan = ((TRAIN_FILTERED, "train", config.basic_tasks + config.backforth_tasks, config.train_per_task),
            (EVAL_SETS["basic"], "validation", config.basic_tasks, config.val_per_task),
            (EVAL_SETS["backforth"], "validation", config.backforth_tasks, config.val_per_task))
    counts: dict[str, dict[str, int]] = {"train": {}, "validation": {}}
    outputs: dict[str, Path] = {}
    entries: dict[str, list[dict]] = {}
    for name, split, tasks, n in plan:
        chosen: list[dict] = []
        for task in tasks:
            sample = _sample(kept[split][task], n, config.seed, split, task)
            counts[split][task] = len(sample)
            chosen.extend(sample)
        chosen.sort(key=lambda e: int(e["id"]))
        outputs[name] = write_json_atomic(ann_dir / name, chosen, indent=None)
        entries[name] = chosen
        if log:
            log(f"filter: wrote {len(chosen)} entries to {ann_dir / name} "
                f"({', '.join(f'{t}={counts[split][t]}' for t in tasks)})")
    if log and rejected:
        log(f"filter: rejected entries {rejected}; first examples {examples}")
    return FilterResult(counts, available, rejected, examples, outputs, entries)


def load_filtered(path: str | os.PathLike) -> list[dict]:
    """Read a filtered annotation file, checking every entry (AnnotationError names file + entry)."""
    path = Path(path)
    raw = _load_list(path)
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        try:
            vid = _check_fields(entry, FILTERED_FIELDS)
            if vid in seen:
                raise _Rejected("duplicate id", f"duplicate id {vid}")
        except _Rejected as r:
            raise AnnotationError(f"{_entry_name(path, i, entry)}: {r}") from None
        seen.add(vid)
    return raw
