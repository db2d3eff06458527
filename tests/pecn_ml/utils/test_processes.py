"""Who is alive (pid + start time, zombies), and a child that dies with the process that launched
it: by the watchdog on that process (its stderr a pipe nobody reads, as when the step is dead) and
by the parent-death signal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pecn_ml.utils.processes import process_alive, start_ticks, started_at

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl: Linux")

# argv[4] "watch": dies with process argv[1] (die_with); "signal": only the parent-death signal.
# Writes "ready" to the file argv[2], then waits; on SIGINT writes the file argv[3].
_CHILD = r"""
import sys, time
from pecn_ml.utils.processes import die_with, set_parent_death_signal, start_ticks
pid = int(sys.argv[1])
if sys.argv[4] == "watch":
    die_with(pid, start_ticks(pid), poll_s=0.1, grace_s=5, log=lambda m: print(m, file=sys.stderr, flush=True))
else:
    assert set_parent_death_signal()
open(sys.argv[2], "w").write("ready")
try:
    time.sleep(600)
except KeyboardInterrupt:
    open(sys.argv[3], "w").write("stopped")
"""

# A parent that launches _CHILD watching itself, then waits for ever.
_PARENT = r"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), *sys.argv[2:]], stderr=subprocess.PIPE)
print(child.pid, flush=True)
time.sleep(600)
"""


def _wait_for(path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path.name} never appeared"


def _gone_within(pid: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while process_alive(pid) and time.monotonic() - t0 < timeout_s:
        time.sleep(0.05)
    assert not process_alive(pid), f"process {pid} still runs after {timeout_s}s"
    return time.monotonic() - t0


def test_process_alive_knows_dead_zombie_and_reused_pids():
    me = os.getpid()
    assert process_alive(me) and process_alive(me, start_ticks(me))
    assert not process_alive(me, "1")                       # this pid, but an earlier process
    assert abs(started_at(me) - time.time()) < 24 * 3600
    zombie = subprocess.Popen(["true"])
    time.sleep(0.5)                                          # exited, not yet reaped: a zombie
    assert not process_alive(zombie.pid)
    zombie.wait()
    assert not process_alive(zombie.pid)


def test_the_watchdog_stops_a_child_whose_launcher_died_even_with_a_broken_stderr(tmp_path):
    launcher = subprocess.Popen(["sleep", "600"])            # the step; the child's parent is this test
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(launcher.pid), str(tmp_path / "ready"),
                              str(tmp_path / "stopped"), "watch"], cwd=REPO, stderr=subprocess.PIPE)
    try:
        _wait_for(tmp_path / "ready")
        child.stderr.close()                                 # nobody reads its stderr any more
        launcher.kill()
        launcher.wait()
        t0 = time.monotonic()
        child.wait(timeout=30)                               # the bound; a 1 s poll
        assert time.monotonic() - t0 < 30                    # (5 s was missed on a loaded CI machine)
        assert (tmp_path / "stopped").read_text() == "stopped"  # a KeyboardInterrupt: finally blocks run
    finally:
        for p in (launcher, child):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_parent_death_signal_stops_a_child_of_a_killed_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _CHILD, str(tmp_path / "ready"), str(tmp_path / "stopped"),
                               "signal"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        _wait_for(tmp_path / "ready")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone_within(child, 30) < 30                  # the bound (10 s missed under load)
        assert (tmp_path / "stopped").read_text() == "stopped"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if process_alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_started_with_sigint_ignored_still_dies_with_its_launcher(tmp_path):
    """A background job of a non-interactive shell (`cmd &`, CI) inherits SIGINT ignored; the death
    signal and the watchdog's SIGINT must still stop the child (and run its finally blocks)."""
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    for mode in ("watch", "signal"):
        launcher = subprocess.Popen(["sleep", "600"])
        if mode == "watch":
            child = subprocess.Popen([sys.executable, "-c", _CHILD, str(launcher.pid), str(tmp_path / f"ready_{mode}"),
                                      str(tmp_path / f"stopped_{mode}"), mode], cwd=REPO, preexec_fn=ignore)
            _wait_for(tmp_path / f"ready_{mode}")
            launcher.kill()
            launcher.wait()
            child.wait(timeout=30)
        else:
            launcher.kill()
            launcher.wait()
            parent = subprocess.Popen([sys.executable, "-c", _PARENT, _CHILD, str(tmp_path / f"ready_{mode}"),
                                       str(tmp_path / f"stopped_{mode}"), mode], cwd=REPO, stdout=subprocess.PIPE,
                                      text=True, preexec_fn=ignore)
            pid = int(parent.stdout.readline())
            _wait_for(tmp_path / f"ready_{mode}")
            parent.send_signal(signal.SIGKILL)
            parent.wait()
            try:
                _gone_within(pid, 30)
            finally:
                if process_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        assert (tmp_path / f"stopped_{mode}").read_text() == "stopped", mode   # KeyboardInterrupt, not _exit
