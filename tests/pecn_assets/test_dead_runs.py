"""Dead runs of the instance, not only the demo's, are failed and their pool slots freed by the
`release_dead_runs` sensor: a run whose processes (its run worker from the RUN_START event, or the
demo's tag, and its unfinished steps) are gone; never a run with a live process, nor one of
another machine. (A really killed step and its child: test_killed_step.py.)"""

import socket
import subprocess
import uuid

import dagster as dg
import pytest

from pecn_assets.build import build_definitions
from pecn_assets.runs import HOST_TAG, PID_TAG, run_processes
from pecn_ml.deployment import Deployment


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def instance(tmp_path):
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:  # SQLite: this machine's runs only
        instance.event_log_storage.set_concurrency_slots("gpu", 8)
        yield instance


def started_run(instance, tags=None, worker_pid=None, step_pid=None) -> str:
    """A STARTED run holding a `gpu` slot; its run worker and step events from the given pids."""
    run = instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()),
                                         status=dg.DagsterRunStatus.STARTED, tags=tags or {}))
    for event_type, pid, step in ((dg.DagsterEventType.RUN_START, worker_pid, None),
                                  (dg.DagsterEventType.STEP_START, step_pid, "ip2p_model")):
        if pid is not None:
            instance.report_dagster_event(dg.DagsterEvent(event_type.value, job_name=run.job_name, pid=pid,
                                                          step_key=step), run.run_id)
    assert instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "ip2p_model").is_claimed
    return run.run_id


def test_the_sensor_releases_dead_runs_of_every_kind_and_only_those(instance):
    dead, alive = dead_pid(), 1
    runs = {
        "demo, dead": started_run(instance, tags={PID_TAG: str(dead)}),
        "launched, worker and step dead": started_run(instance, worker_pid=dead, step_pid=dead),
        "demo, alive": started_run(instance, tags={PID_TAG: str(alive)}),
        "worker dead, step alive": started_run(instance, worker_pid=dead, step_pid=alive),
        "other machine": started_run(instance, tags={PID_TAG: str(dead), HOST_TAG: socket.gethostname() + "-x"}),
        "nothing known": started_run(instance),
    }
    assert set(run_processes(instance, instance.get_run_by_id(runs["worker dead, step alive"]))) == {dead, alive}

    sensor = build_definitions(Deployment(profile="smoke")).get_sensor_def("release_dead_runs")
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    released = {runs["demo, dead"], runs["launched, worker and step dead"]}
    assert result.skip_message.startswith("released 2 dead run(s)")
    for name, run_id in runs.items():
        status = instance.get_run_by_id(run_id).status
        assert (status == dg.DagsterRunStatus.FAILURE) is (run_id in released), name
    holding = {s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots}
    assert holding == set(runs.values()) - released
    assert sensor.evaluate_tick(dg.build_sensor_context(instance=instance)).skip_message == "no dead runs"
