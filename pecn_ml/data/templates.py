"""The 174 SSv2 classes and the four-task mapping, both shipped as data (JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).parent
TEMPLATES_JSON = _HERE / "ssv2_templates.json"
TASKS_JSON = _HERE / "tasks.json"

BASIC_TASKS = ("move_object", "drop_object", "cover_object")
BACKFORTH_TASKS = ("back_and_forth",)


@dataclass(frozen=True)
class Template:
    index: int
    label_key: str      # "Dropping something onto something"
    template: str       # "Dropping [something] onto [something]"
    placeholders: int   # number of [..] groups


@lru_cache(maxsize=1)
def load_templates() -> tuple[Template, ...]:
    """All 174 SSv2 classes in label-index order."""
    rows = json.loads(TEMPLATES_JSON.read_text(encoding="utf-8"))
    return tuple(Template(r["index"], r["label_key"], r["template"], r["placeholders"]) for r in rows)


def label_key_of(template: str) -> str:
    """SSv2's class key: the template with square brackets removed (what labels.json holds)."""
    return template.replace("[", "").replace("]", "")


def load_task_map(path: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """Task name -> label keys (exact keys, matched case-insensitively). Default: tasks.json."""
    raw = json.loads(Path(path or TASKS_JSON).read_text(encoding="utf-8"))
    return {task: tuple(keys) for task, keys in raw.items()}


def task_of_label_key(task_map: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Lower-cased label key -> task name; a key in two tasks is an error."""
    out: dict[str, str] = {}
    for task, keys in task_map.items():
        for key in keys:
            k = key.lower()
            if k in out and out[k] != task:
                raise ValueError(f"label key {key!r} is mapped to both {out[k]!r} and {task!r}")
            out[k] = task
    return out
