"""A step killed with SIGKILL (an OOM kill, a crashed worker) while its training child runs, with
one process (the child's parent-death signal) and two (`torchrun`: the ranks' watchdog on the
step's pid, their stderr a pipe nobody reads any more): the child notices within seconds and
exits, so its device locks are free; the locks named the child as their holder while it ran; the dead run is failed and its `gpu` pool slot freed by
`release_dead_runs`, with a log line saying so; the launch's scratch files are removed by the
next launch. The child is the real `check` trainer holding its launch
(pecn_test_support/held_launch_probe.py), so nothing is trained."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pecn_assets.runs import release_dead_runs
from pecn_ml.utils.files import owned_tmp_dir
from pecn_ml.utils.gpu_devices import free_devices, read_holders
from pecn_ml.utils.processes import process_alive

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240  # the step and its child import dagster, torch and accelerate (slow on a busy CI box)


def _wait(condition, timeout_s: float, what: str, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; step log:\n{log.read_text()[-4000:]}")


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text(encoding="utf-8"))
    (home / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return home


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc: Linux")
@pytest.mark.parametrize("processes", [1, 2])
def test_a_killed_step_leaves_no_orphan_no_held_device_no_stuck_run(home, tmp_path, processes):
    locks, scratch = tmp_path / "locks", tmp_path / "scratch"
    devices = [str(i) for i in range(processes)]
    scratch.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "step.log"
    with open(log, "w") as out:
        step = subprocess.Popen([sys.executable, "-m", "pecn_test_support.held_launch_probe", str(locks),
                                 str(tmp_path / "out"), str(processes)], env=env, cwd=REPO, stdout=out, stderr=out)
    try:
        _wait(lambda: "holds the launch" in log.read_text(), START_TIMEOUT_S, "the child to hold its launch", log)
        holders = read_holders(locks, devices)
        child = holders["0"]["pid"]  # K = 1: the trainer; K = 2: torchrun, which starts the ranks
        assert all(h["pid"] == child and h["claimed_by_pid"] == step.pid for h in holders.values())
        assert child != step.pid and process_alive(child)
        ranks = [int(p) for p in Path(f"/proc/{child}/task/{child}/children").read_text().split()]
        assert len(ranks) == (processes if processes > 1 else 0)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            slots = instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
            assert [s.run_id for s in slots] == [run.run_id]

            step.send_signal(signal.SIGKILL)
            step.wait(timeout=30)
            t0 = time.monotonic()
            _wait(lambda: not any(process_alive(p) for p in (child, *ranks)) and free_devices(locks, devices) == devices,
                  30, "the orphaned child (and its ranks) to exit and free its devices", log)
            print(f"child exited and freed its device {time.monotonic() - t0:.1f}s after the step was killed")

            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # nobody told Dagster
            lines: list[str] = []
            assert release_dead_runs(instance, log=lines.append) == [run.run_id]
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
            assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
            assert lines == [l for l in lines if run.run_id in l and "gpu:held_launch" in l] and len(lines) == 1
            assert release_dead_runs(instance, log=lines.append) == []  # once

        left = list(scratch.glob(".pecn-pipes.tmp-*"))
        assert len(left) == 1 and (left[0] / "job.json").is_file()  # the killed step's scratch folder
        with owned_tmp_dir(scratch / "pecn-pipes"):  # the next launch on this machine
            assert not left[0].exists()
    finally:
        if step.poll() is None:
            step.kill()
            step.wait()
