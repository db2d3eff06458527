"""Per-run folders (`{base}/runs/{run id}`: never changed by a later run, so recorded shas hold)
and tags of the steps that write files, and `release_dead_runs`: a run of this machine whose
processes were killed stays STARTED and keeps its `gpu` pool slot, blocking every later GPU step;
where Dagster's run monitoring cannot see it (`dagster dev`, in-process runs) it is failed here."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, Optional

import dagster as dg

from pecn_ml.utils.processes import process_alive, started_at

RUNS = "runs"


def run_dir(base: Path, context: dg.AssetExecutionContext) -> Path:
    """`{base}/runs/{run id}`: this run's own folder under `base`."""
    return Path(base) / RUNS / context.run.run_id


def step_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Tags that tie a training run's tracker entry to its Dagster step."""
    tags = {"dagster_run_id": context.run.run_id, "dagster_asset": context.asset_key.to_user_string()}
    if context.has_partition_key:
        tags["dagster_partition"] = str(context.partition_key)
    return tags


PID_TAG = "pecn/demo_pid"    # the process that executes an in-process run (set by the demo)
HOST_TAG = "pecn/host"       # the machine it runs on
IN_FLIGHT = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
_STEP_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
                dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_SKIPPED}
_LOCAL_STORAGE = ("SqliteRunStorage", "InMemoryRunStorage")  # an instance only this machine uses
_PID_REUSE_SLACK_S = 2.0


def in_process_tags() -> dict[str, str]:
    """Tags of a run this process executes itself (in-process), so a later check can tell it died."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def run_processes(instance: dg.DagsterInstance, run: dg.DagsterRun,
                  created: Optional[float] = None) -> dict[int, Optional[float]]:
    """{pid: when it began working on `run` (None: unknown)}: the run worker (RUN_START event, or
    the demo's tag with `created`) and the processes of the steps that started and have not ended."""
    pids: dict[int, Optional[float]] = {}
    if run.tags.get(PID_TAG, "").isdigit():
        pids[int(run.tags[PID_TAG])] = created
    steps: dict[str, tuple[int, float]] = {}
    for entry in instance.all_logs(run.run_id, of_type={dg.DagsterEventType.RUN_START, *_STEP_EVENTS}):
        event = entry.dagster_event
        if event is None or event.pid is None:
            continue
        if event.event_type == dg.DagsterEventType.RUN_START:
            pids.setdefault(event.pid, entry.timestamp)
        elif event.event_type == dg.DagsterEventType.STEP_START:
            steps[event.step_key] = (event.pid, entry.timestamp)
        else:
            steps.pop(event.step_key, None)
    for pid, since in steps.values():
        pids.setdefault(pid, since)
    return pids


def _gone(pid: int, since: Optional[float]) -> bool:
    """Process `pid` no longer runs, or the pid now belongs to a process started after `since`."""
    if not process_alive(pid):
        return True
    start = started_at(pid) if since is not None else None
    return start is not None and start > since + _PID_REUSE_SLACK_S


def _on_this_machine(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether `run`'s processes ran here: its host tag, else an instance only this machine uses."""
    if HOST_TAG in run.tags:
        return run.tags[HOST_TAG] == socket.gethostname()
    return type(instance.run_storage).__name__ in _LOCAL_STORAGE


def _pool_slots(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """"pool:step" of every pool slot `run_id` holds."""
    storage = instance.event_log_storage
    infos = storage.get_concurrency_infos(sorted(storage.get_concurrency_keys()))
    return [f"{pool}:{slot.step_key}" for pool, info in infos.items() for slot in info.claimed_slots
            if slot.run_id == run_id]


def release_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> list[str]:
    """Fail every in-flight run of this machine whose processes are all gone, free its pool slots,
    log it; return their run ids. Runs Dagster's run monitoring covers, of other machines, or
    without a known process are left alone."""
    if instance.run_launcher.supports_check_run_worker_health:
        return []  # dagster.yaml's run_monitoring covers this launcher
    released = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=list(IN_FLIGHT))):
        run = record.dagster_run
        if not _on_this_machine(instance, run):
            continue
        pids = run_processes(instance, run, record.create_timestamp.timestamp())
        if not pids or not all(_gone(pid, since) for pid, since in pids.items()):
            continue
        run = instance.get_run_by_id(run.run_id)
        if run is None or run.status not in IN_FLIGHT:  # it ended while we looked
            continue
        slots = _pool_slots(instance, run.run_id)
        names = ", ".join(str(p) for p in sorted(pids))
        instance.report_run_failed(run, message=f"the processes of this run ({names}) are gone (killed?): "
                                                f"marked failed by pecn_assets.runs.release_dead_runs")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log(f"released stale run {run.run_id} ({run.job_name}): its processes {names} are gone; "
            f"marked FAILURE, freed pool slot(s) {', '.join(slots) or '(none held)'}")
        released.append(run.run_id)
    return released
