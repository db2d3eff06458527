"""Delete the training-run folders (`{outputs}/…/runs/{run id}`) that no materialisation refers to:
the job `cleanup_checkpoints` and the functions behind `python -m pecn_assets.tools.cleanup`.

Folders are matched to materialisations by identity (run id and place below the outputs folder,
else the sha256 of a file or folder in them), not by absolute path, so a moved outputs folder is
judged the same. Kept: what the latest materialisation of any asset partition names, unfinished
runs, runs this instance does not know, and (unless `include_superseded`) folders only earlier
materialisations name; everything else is listed (dry run) or deleted.
"""

import functools
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterator, Optional

import dagster as dg
from pydantic import Field

from pecn_assets.runs import RUNS
from pecn_ml.utils.files import folder_manifest, manifest_sha256, sha256_file
from pecn_ml.utils.usage import bytes_on_disk

FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
DATA_VERSION_TAG = "dagster/data_version"
INPUT_DATA_VERSION = "dagster/input_data_version/"
_SHA256 = re.compile(r"\b[0-9a-f]{64}\b")
_PAGE = 1000


@dataclass
class CleanupPlan:
    """What the cleanup keeps (folder -> why) and what it deletes (folder -> bytes; why, if superseded)."""

    keep: dict[Path, str] = field(default_factory=dict)
    delete: dict[Path, int] = field(default_factory=dict)
    superseded: dict[Path, str] = field(default_factory=dict)

    def summary(self) -> str:
        freed = sum(self.delete.values()) / 2 ** 20
        return f"{len(self.delete)} run folder(s) to delete ({freed:.1f} MiB), {len(self.keep)} kept"


@dataclass(frozen=True)
class Mention:
    """A materialisation ("asset[/partition]") that names something; `latest` of its partition or not."""

    who: str
    latest: bool


def materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> Iterator[dg.EventLogRecord]:
    """Every recorded materialisation of `key`, newest first (read a page at a time)."""
    cursor = None
    while True:
        page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=_PAGE, cursor=cursor)
        yield from page.records
        if not page.has_more:
            return
        cursor = page.cursor


def all_materializations(instance: dg.DagsterInstance) -> Iterator[tuple[str, bool, dg.EventLogRecord]]:
    """("asset[/partition]", latest of that partition?, record) of every recorded materialisation."""
    for key in instance.get_asset_keys():
        seen: set[Optional[str]] = set()
        for record in materializations(instance, key):
            partition = record.partition_key
            yield (key.to_user_string() + (f"/{partition}" if partition else ""), partition not in seen, record)
            seen.add(partition)


def _strings(value: Any) -> Iterator[str]:
    """Every string in a metadata value (paths, text, JSON nested at any depth)."""
    if isinstance(value, dg.MetadataValue):   # a path's `value` is the path
        inner = getattr(value, "value", None)
        if inner is not value:
            yield from _strings(inner)
    elif isinstance(value, str):
        yield value
    elif isinstance(value, (dict, list, tuple)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def run_folder_keys(path: str) -> Iterator[tuple[str, ...]]:
    """The path components of every `…/runs/{run id}` folder that `path` lies in or is."""
    parts = PurePath(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == RUNS:
            yield parts[:i + 2]


@dataclass
class Identities:
    """Who names which run folder: by run id (with the full path named), and by sha256."""

    by_run: dict[str, list[tuple[tuple[str, ...], Mention]]] = field(default_factory=dict)
    by_sha: dict[str, list[Mention]] = field(default_factory=dict)

    @classmethod
    def of(cls, instance: dg.DagsterInstance) -> "Identities":
        ids = cls()
        for who, latest, record in all_materializations(instance):
            mat = record.asset_materialization
            mention, tags = Mention(who, latest), mat.tags or {}
            texts = [t for v in mat.metadata.values() for t in _strings(v)]
            texts += [v for k, v in tags.items() if k == DATA_VERSION_TAG or k.startswith(INPUT_DATA_VERSION)]
            for key in {k for t in texts if RUNS in t for k in run_folder_keys(t)}:
                ids.by_run.setdefault(key[-1], []).append((key, mention))
            for sha in {s for t in texts for s in _SHA256.findall(t)}:
                ids.by_sha.setdefault(sha, []).append(mention)
        return ids

    def naming(self, folder_parts: tuple[str, ...]) -> list[Mention]:
        """The materialisations whose metadata names the folder `…/{folder_parts}` (its path below
        the outputs folder, ending with the run id), wherever the outputs folder was then."""
        n = len(folder_parts)
        return [m for key, m in self.by_run.get(folder_parts[-1], []) if key[-n:] == folder_parts]

    def naming_file(self, folder: Path) -> Optional[tuple[Path, str, Mention]]:
        """(file or sub-folder, its sha256, a materialisation naming that sha) for a file of
        `folder` or a folder in it (by its manifest sha256, `pecn_ml.utils.files.folder_manifest`),
        one that a latest materialisation names if any; None if none is named."""
        sha_of = functools.lru_cache(maxsize=None)(sha256_file)  # every file hashed once
        hits = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            sha = sha_of(path)
            hits += [(not m.latest, path, sha, m) for m in self.by_sha.get(sha, [])]
        for sub in sorted(p for p in [folder, *folder.rglob("*")] if p.is_dir() and not p.is_symlink()):
            try:
                sha = manifest_sha256(folder_manifest(sub, sha_of=sha_of))
            except FileNotFoundError:   # no file to list
                continue
            hits += [(not m.latest, sub, sha, m) for m in self.by_sha.get(sha, [])]
        return min(hits, key=lambda h: (h[0], str(h[1])))[1:] if hits else None


def run_folders(outputs: Path) -> Iterator[Path]:
    """`…/runs/{run id}` folders under `outputs`."""
    for runs in sorted(outputs.rglob(RUNS)):
        if runs.is_dir():
            yield from sorted(p for p in runs.iterdir() if p.is_dir())


def _by_contents(ids: Identities, folder: Path) -> tuple[bool, Optional[str]]:
    """(live, why) of a folder no materialisation names by place, judged by its files' sha256."""
    hit = ids.naming_file(folder)
    if hit is None:
        return False, None
    path, sha, mention = hit
    kind = "folder" if path.is_dir() else "file"
    what = f"its {kind} {path.relative_to(folder).as_posix()} (sha256 {sha[:12]}) is named by"
    if mention.latest:
        return True, f"{what} the latest materialisation of {mention.who}"
    return False, f"superseded: {what} an earlier materialisation of {mention.who}"


def plan_cleanup(instance: dg.DagsterInstance, outputs: Path, include_superseded: bool = False) -> CleanupPlan:
    """Decide, for every run folder under `outputs`, whether it stays (and why) or goes."""
    outputs = Path(outputs).resolve()
    ids, plan = Identities.of(instance), CleanupPlan()
    for folder in run_folders(outputs):
        named = ids.naming(folder.relative_to(outputs).parts)
        live = next((m.who for m in named if m.latest), None)
        run = instance.get_run_by_id(folder.name)
        kept = (f"named by the latest materialisation of {live}" if live is not None
                else "run unknown to this Dagster instance" if run is None
                else f"run is {run.status.value}" if run.status not in FINISHED else None)
        if kept:
            plan.keep[folder] = kept
            continue
        if named:
            live_by_contents, why = False, f"superseded: named by an earlier materialisation of {named[0].who}"
        else:
            live_by_contents, why = _by_contents(ids, folder)
        if live_by_contents:
            plan.keep[folder] = why
        elif why is not None and not include_superseded:
            plan.keep[folder] = f"{why} (--include-superseded deletes it)"
        else:
            plan.delete[folder] = bytes_on_disk(folder)
            if why is not None:
                plan.superseded[folder] = why
    return plan


def cleanup(instance: dg.DagsterInstance, outputs: Path, dry_run: bool = True, log=print,
            include_superseded: bool = False) -> CleanupPlan:
    """Print the plan; unless `dry_run`, delete the folders it does not keep."""
    plan = plan_cleanup(instance, outputs, include_superseded=include_superseded)
    for folder, why in plan.keep.items():
        log(f"keep   {folder}  ({why})")
    for folder, size in plan.delete.items():
        why = f"; {plan.superseded[folder]}" if folder in plan.superseded else ""
        log(f"{'would delete' if dry_run else 'delete'} {folder}  ({size / 2 ** 20:.1f} MiB{why})")
        if not dry_run:
            shutil.rmtree(folder)
    log(("dry run: " if dry_run else "") + plan.summary())
    return plan


class CleanupCheckpointsConfig(dg.Config):
    """Run folders no materialisation names are listed; deleted only when dry_run is false."""

    dry_run: bool = Field(default=True, description="only list what would be deleted")
    include_superseded: bool = Field(default=False, description="also delete folders that only earlier "
                                     "materialisations name (by place or by a file's sha256)")


@dg.op(description="Delete training-run folders that no materialisation of any asset refers to (dry run "
                   "unless dry_run is false; superseded ones only with include_superseded).",
       required_resource_keys={"settings"})
def cleanup_checkpoints_op(context: dg.OpExecutionContext, config: CleanupCheckpointsConfig) -> None:
    cleanup(context.instance, context.resources.settings.outputs_path(), dry_run=config.dry_run,
            log=context.log.info, include_superseded=config.include_superseded)


@dg.job(name="cleanup_checkpoints", description="Delete training-run folders (checkpoints) that no "
        "materialisation of any asset refers to; a dry run unless the op config says dry_run: false, superseded "
        "checkpoints only with include_superseded: true.")
def cleanup_checkpoints_job():
    cleanup_checkpoints_op()
