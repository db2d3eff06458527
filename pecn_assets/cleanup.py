"""Delete the training-run folders that no latest materialisation of any asset refers to.

    DAGSTER_HOME=$PWD/dagster_home .venv/bin/python -m pecn_assets.cleanup            # dry run
    DAGSTER_HOME=$PWD/dagster_home .venv/bin/python -m pecn_assets.cleanup --delete   # delete

or the job `cleanup_checkpoints` in the UI (Launchpad config `dry_run: false` to delete).

Every materialisation of a training asset writes a folder of its own, `{outputs}/…/runs/{run id}`
(pecn_assets/runs.py), and never changes it, so old checkpoints pile up. A run folder is kept
when a path in the metadata of the latest materialisation of any asset partition lies inside it
(the checkpoint an `evaluation` scored, the PAC-Net that made the estimates, ...), when its run is
not finished (a step that may still be retried), or when this instance does not know its run (a
folder of another Dagster instance sharing the outputs folder). Everything else is listed (dry
run) or deleted. Older materialisations name deleted folders afterwards: that is the point.
"""


import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg

from pecn_assets.runs import RUNS

FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass
class CleanupPlan:
    """What the cleanup keeps (folder -> why) and what it deletes (folder -> bytes)."""

    keep: dict[Path, str] = field(default_factory=dict)
    delete: dict[Path, int] = field(default_factory=dict)

    def summary(self) -> str:
        freed = sum(self.delete.values()) / 2 ** 20
        return f"{len(self.delete)} run folder(s) to delete ({freed:.1f} MiB), {len(self.keep)} kept"


def latest_materializations(instance: dg.DagsterInstance) -> Iterator[tuple[str, dg.EventLogRecord]]:
    """("asset[/partition]", record) of the latest materialisation of every asset partition."""
    for key in instance.get_asset_keys():
        partitions = sorted(instance.get_materialized_partitions(key)) or [None]
        for partition in partitions:
            records = instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=key, asset_partitions=[partition] if partition else None), limit=1).records
            if records:
                yield key.to_user_string() + (f"/{partition}" if partition else ""), records[0]


def referenced_paths(instance: dg.DagsterInstance) -> dict[Path, str]:
    """Every path in the metadata of a latest materialisation -> the asset partition naming it."""
    out: dict[Path, str] = {}
    for name, record in latest_materializations(instance):
        for value in record.asset_materialization.metadata.values():
            if isinstance(value, dg.PathMetadataValue) and value.path:
                out.setdefault(Path(value.path).resolve(), name)
    return out


def run_folders(outputs: Path) -> Iterator[Path]:
    """`…/runs/{run id}` folders under `outputs`."""
    for runs in sorted(outputs.rglob(RUNS)):
        if runs.is_dir():
            yield from sorted(p for p in runs.iterdir() if p.is_dir())


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def plan_cleanup(instance: dg.DagsterInstance, outputs: Path) -> CleanupPlan:
    """Decide, for every run folder under `outputs`, whether it stays (and why) or goes."""
    refs, plan = referenced_paths(instance), CleanupPlan()
    for folder in run_folders(Path(outputs).resolve()):
        user = next((who for path, who in refs.items() if path == folder or folder in path.parents), None)
        run = instance.get_run_by_id(folder.name)
        if user is not None:
            plan.keep[folder] = f"named by the latest materialisation of {user}"
        elif run is None:
            plan.keep[folder] = "run unknown to this Dagster instance"
        elif run.status not in FINISHED:
            plan.keep[folder] = f"run is {run.status.value}"
        else:
            plan.delete[folder] = _size(folder)
    return plan


def cleanup(instance: dg.DagsterInstance, outputs: Path, dry_run: bool = True, log=print) -> CleanupPlan:
    """Print the plan; unless `dry_run`, delete the folders it does not keep."""
    plan = plan_cleanup(instance, outputs)
    for folder, why in plan.keep.items():
        log(f"keep   {folder}  ({why})")
    for folder, size in plan.delete.items():
        log(f"{'would delete' if dry_run else 'delete'} {folder}  ({size / 2 ** 20:.1f} MiB)")
        if not dry_run:
            shutil.rmtree(folder)
    log(("dry run: " if dry_run else "") + plan.summary())
    return plan


class CleanupCheckpointsConfig(dg.Config):
    """Run folders no latest materialisation names are listed; deleted only when dry_run is false."""

    dry_run: bool = True


@dg.op(description="Delete training-run folders that no latest materialisation of any asset refers to "
                   "(dry run unless dry_run is false).", required_resource_keys={"settings"})
def cleanup_checkpoints_op(context: dg.OpExecutionContext, config: CleanupCheckpointsConfig) -> None:
    plan = cleanup(context.instance, context.resources.settings.outputs_path(), dry_run=config.dry_run,
                   log=context.log.info)
    context.log.info(plan.summary())


@dg.job(name="cleanup_checkpoints", description="Delete training-run folders (checkpoints) that no latest "
        "materialisation of any asset refers to; a dry run unless the op config says dry_run: false.")
def cleanup_checkpoints_job():
    cleanup_checkpoints_op()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delete", action="store_true", help="delete (default: a dry run that only lists)")
    parser.add_argument("--outputs", help="the outputs folder (default: the deployment's, see definitions.py)")
    args = parser.parse_args(argv)
    from pecn_assets.definitions import deployment_from_env

    outputs = Path(args.outputs) if args.outputs else deployment_from_env(os.environ)["settings"].outputs_path()
    with dg.DagsterInstance.get() as instance:
        cleanup(instance, outputs, dry_run=not args.delete)
    return 0


if __name__ == "__main__":
    sys.exit(main())
