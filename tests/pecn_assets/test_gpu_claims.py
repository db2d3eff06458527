"""Two concurrent GPU steps never share a device and never exceed the pool, across two runs of one
instance: simulated devices "0,1" on the CPU, the project's dagster.yaml with the `gpu` pool at 2,
two runs launched at once (two processes), each with two GPU steps that claim a device the way
the real GPU assets do (pecn_test_support/gpu_claim_probe.py)."""

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEVICES = ["0", "1"]


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_concurrent_gpu_steps_of_two_runs_hold_distinct_devices(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text(encoding="utf-8"))
    config["concurrency"]["pools"]["default_limit"] = len(DEVICES)  # as deploy/README.md says: limit = GPUs
    (home / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    import dagster as dg

    # Create the instance's SQLite storage once: two fresh processes racing to create it can leave
    # alembic with two version heads ("more than one head present") and both runs fail.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
        instance.event_log_storage.get_event_records(dg.EventRecordsFilter(dg.DagsterEventType.RUN_START), limit=1)
    markers, locks = tmp_path / "markers", tmp_path / "locks"
    markers.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    # Output to files, not pipes: a run blocked on a full pipe would keep its pool slots and stall the other.
    logs = {job: (tmp_path / f"{job}.out", tmp_path / f"{job}.err") for job in ("run_a", "run_b")}
    procs = {}
    for job, (out, err) in logs.items():
        with open(out, "w") as stdout, open(err, "w") as stderr:
            procs[job] = subprocess.Popen([sys.executable, "-m", "pecn_test_support.gpu_claim_probe", job,
                                           str(markers), str(locks), ",".join(DEVICES)],
                                          env=env, cwd=REPO, stdout=stdout, stderr=stderr)
    try:
        for p in procs.values():
            p.wait(timeout=600)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for job, p in procs.items():
        out, err = (f.read_text() for f in logs[job])
        assert p.returncode == 0, f"{job} failed:\n{out}\n{err[-3000:]}"
    runs = [json.loads(logs[job][0].read_text().strip().splitlines()[-1]) for job in procs]
    assert len({r["run_id"] for r in runs}) == 2

    records = [json.loads(p.read_text()) for p in sorted(markers.glob("*.json"))]
    assert sorted(r["step"] for r in records) == ["gpu_a1", "gpu_a2", "gpu_b1", "gpu_b2"]
    assert all(len(r["devices"]) == 1 and r["devices"][0] in DEVICES for r in records)
    for a, b in combinations(records, 2):
        if _overlap(a, b):
            assert a["devices"] != b["devices"], f"{a['step']} and {b['step']} shared GPU {a['devices']}"
    # never more GPU steps at once than the pool allows (= the devices)
    for r in records:
        assert sum(_overlap(r, o) for o in records) <= len(DEVICES), records
    # and the pool does let two run at once: both devices were in use together
    assert any(r["met_another"] for r in records), records
    assert {d for r in records for d in r["devices"]} == set(DEVICES)
    assert {r["run_id"] for r in records} == {r["run_id"] for r in runs}
