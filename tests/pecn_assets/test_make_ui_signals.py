"""`make ui` started the way a script starts it (in the background: SIGINT ignored) still stops on
SIGTERM to make and on SIGINT to its process group (after sizing the gpu pool, pecn_assets/gpu_pool.py).

`dagster dev` is replaced by a stub that does what matters here: it copies its SIGINT handler to
SIGTERM, as dagster dev does (dagster._utils.interrupts.setup_interrupt_handlers), then waits. A fake
venv (VENV=...) holds the stub as bin/dagster and the real interpreter as bin/python, and is
already "installed", so `make ui` runs only its own recipe.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pecn_test_support import ui_server

REPO = Path(__file__).resolve().parents[2]

DAGSTER_STUB = f"""#!{sys.executable}
import signal, sys, time
signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))  # what dagster dev does
try:
    print("dagster", *sys.argv[1:], flush=True)
    time.sleep(120)
except KeyboardInterrupt:
    print("stopped cleanly", flush=True)
"""


@pytest.fixture
def fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv / "bin" / "dagster").write_text(DAGSTER_STUB)
    for name in ("python", "dagster"):
        (venv / "bin" / name).chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: `make setup` has nothing to do
    return venv


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell does to a background command
    # and SIGTERM as a shell leaves it: the test process may ignore it by now (dagster code run
    # in-process earlier copies SIGINT's handler to SIGTERM, and under CI SIGINT is ignored)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _read_until(proc: subprocess.Popen, prefix: str, timeout_s: float = 60) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return lines
    raise AssertionError(f"no line starting with {prefix!r} in {timeout_s:.0f}s: {lines}")


@pytest.mark.parametrize("how", ["SIGTERM to make", "SIGINT to the group"])
def test_background_make_ui_stops_on_signal(fake_venv, tmp_path, how):
    home = tmp_path / "dagster_home"   # `make ui` sizes the gpu pool of this instance first
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PECN_GPU_DEVICES": "0,1", "PECN_TRAIN_PROCESSES": "1"}
    env.pop("PECN_GPU_POOL_LIMIT", None)
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "ui", f"VENV={fake_venv}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_ignore_sigint, start_new_session=True, env=env)
    try:
        started = _read_until(proc, "dagster ")
        assert started[-1] == "dagster dev -h 127.0.0.1 -p 3000"  # the web UI stays on 127.0.0.1
        assert any(line.startswith("gpu pool limit 2") for line in started), started
        if how == "SIGTERM to make":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
        rest = proc.stdout.read()
        assert "stopped cleanly" in rest, rest
        deadline = time.monotonic() + 10
        while ui_server.group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not ui_server.group_alive(proc.pid)
    finally:
        ui_server.stop_group(proc, grace_s=5)
