"""GPU device claims: exclusive across threads and processes, freed when a holder dies, waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pecn_ml.utils.gpu_devices import (CUDA_ENV, claim_devices, device_set,
                                       free_devices, parse_devices, read_holders)

REPO = Path(__file__).resolve().parents[3]


def test_device_set_configured_cuda_or_none():
    assert device_set("0, 1,3") == ["0", "1", "3"]
    assert device_set("", cuda_count=lambda: 4) == []  # explicitly none
    assert device_set(None, {}, cuda_count=lambda: 2) == ["0", "1"]
    assert device_set(None, {CUDA_ENV: "2,3"}, cuda_count=lambda: 2) == ["2", "3"]  # physical ids
    assert device_set(None, {}, cuda_count=lambda: 0) == []
    with pytest.raises(ValueError, match="twice"):
        parse_devices("0,0")
    with pytest.raises(ValueError, match="invalid"):
        parse_devices("0;1")
    for bad in ("a,b", "-1", "0,,1", "GPU-1234"):  # configured devices: indices only, named when refused
        with pytest.raises(ValueError, match=f"gpu_devices={bad!r}"):
            device_set(bad)
    assert device_set(None, {CUDA_ENV: "GPU-1234"}, cuda_count=lambda: 1) == ["GPU-1234"]  # CUDA may name UUIDs


def test_claim_sets_visible_devices_and_refuses_impossible_claims(tmp_path, monkeypatch):
    monkeypatch.setenv(CUDA_ENV, "before")
    with claim_devices(2, tmp_path, devices=["0", "1", "2"], set_env=True) as claim:
        assert claim.devices == ("0", "1") and claim.cuda_visible_devices == "0,1"
        assert os.environ[CUDA_ENV] == "0,1" and claim.env() == {CUDA_ENV: "0,1"}
        assert free_devices(tmp_path, ["0", "1", "2"]) == ["2"]
        assert read_holders(tmp_path, ["0"])["0"]["pid"] == os.getpid()
        claim.hand_to(12345)                                   # a launched child holds them now
        assert {h["pid"] for h in read_holders(tmp_path, ["0", "1"]).values()} == {12345}
        assert read_holders(tmp_path, ["1"])["1"]["claimed_by_pid"] == os.getpid()
        claim.hand_to(os.getpid())                             # and back
        assert "claimed_by_pid" not in read_holders(tmp_path, ["0"])["0"]
        assert claim.metadata()["gpu_devices"] == ["0", "1"]
    assert os.environ[CUDA_ENV] == "before"
    assert free_devices(tmp_path, ["0", "1", "2"]) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="offers 2"):
        with claim_devices(3, tmp_path, devices=["0", "1"]):
            pass
    with claim_devices(1, tmp_path, devices=[]) as none:  # a CPU machine: an empty claim
        assert none.devices == () and none.env() == {}


def _check_exclusive(n_threads, n_claim, devices, rounds, lock_dir):
    in_use: set[str] = set()
    guard = threading.Lock()
    errors: list[str] = []
    seen: list[tuple[str, ...]] = []

    def worker():
        for _ in range(rounds):
            with claim_devices(n_claim, lock_dir, timeout_s=30, devices=devices, poll_s=0.005) as c:
                with guard:
                    clash = in_use & set(c.devices)
                    if clash:
                        errors.append(f"shared {clash}")
                    in_use.update(c.devices)
                    seen.append(c.devices)
                time.sleep(0.003)
                with guard:
                    in_use.difference_update(c.devices)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors, seen


def test_concurrent_threads_never_share_a_device(tmp_path):
    errors, seen = _check_exclusive(4, 1, ["0", "1"], 25, tmp_path)
    assert errors == [] and len(seen) == 100
    assert {d for s in seen for d in s} == {"0", "1"}
    errors, seen = _check_exclusive(3, 2, ["0", "1", "2"], 15, tmp_path / "pairs")
    assert errors == [] and all(len(set(s)) == 2 for s in seen)


_PROCESS_CLAIMER = r"""
import os, sys, time
from pecn_ml.utils.gpu_devices import claim_devices
lock_dir, marks, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(rounds):
    with claim_devices(1, lock_dir, timeout_s=60, devices=["0", "1"], poll_s=0.005) as c:
        mark = os.path.join(marks, "in-use-" + c.devices[0])
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holds it
        os.close(fd)
        time.sleep(0.005)
        os.unlink(mark)
print("ok")
"""


def test_concurrent_processes_never_share_a_device(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS_CLAIMER, str(tmp_path / "locks"),
                               str(marks), "20"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and out.strip() == "ok", err  # FileExistsError = shared device


_HOLDER = r"""
import sys, time
from pecn_ml.utils.gpu_devices import claim_devices
with claim_devices(1, sys.argv[1], devices=["0"]):
    print("claimed", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_frees_its_device(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(TimeoutError, match=str(holder.pid)):
            with claim_devices(1, tmp_path, timeout_s=0.3, devices=["0"], poll_s=0.05):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with claim_devices(1, tmp_path, timeout_s=5, devices=["0"]) as claim:
            assert claim.devices == ("0",)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_child_given_the_locks_keeps_the_claim_after_the_parent_lets_go(tmp_path):
    with claim_devices(1, tmp_path, devices=["0"]) as claim:
        child = subprocess.Popen(["sleep", "600"], pass_fds=claim.fds)
    try:
        assert free_devices(tmp_path, ["0"]) == []  # the child still holds the open lock file
    finally:
        child.kill()
        child.wait()
    assert free_devices(tmp_path, ["0"]) == ["0"]


def test_waits_with_a_log_line_then_claims(tmp_path):
    lines: list[str] = []
    released = threading.Event()

    def hold():
        with claim_devices(1, tmp_path, devices=["0"]):
            started.set()
            time.sleep(0.6)
        released.set()

    started = threading.Event()
    t = threading.Thread(target=hold)
    t.start()
    started.wait(5)
    with claim_devices(1, tmp_path, timeout_s=10, log=lines.append, devices=["0"],
                       poll_s=0.05) as claim:
        assert released.is_set() and claim.waited_s >= 0.3
    t.join()
    assert any(line.startswith("waiting for 1 free GPU device(s) of 0") for line in lines)
    assert lines[-1].startswith("claimed GPU device(s) 0 after")


def test_times_out_naming_the_holder(tmp_path):
    with claim_devices(1, tmp_path, devices=["0"], holder={"run_id": "run-a"}):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="run-a"):
            with claim_devices(1, tmp_path, timeout_s=0.4, devices=["0"], poll_s=0.05):
                pass
        assert 0.35 <= time.monotonic() - t0 < 5
