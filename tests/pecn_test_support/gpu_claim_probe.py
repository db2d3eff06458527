"""Stand-in GPU steps that claim devices exactly as the real GPU assets do (`claimed_gpus` with a
`PecnSettings`), for the instance-level test of device claims (tests/pecn_assets/test_gpu_claims.py).

    python -m pecn_test_support.gpu_claim_probe JOB MARKER_DIR LOCK_DIR DEVICES

runs job `run_a` or `run_b` (two GPU steps each, multiprocess executor) in the instance at
$DAGSTER_HOME. Each step claims one device, writes a record (devices, pid, times) while it holds
it, waits until a second step holds a device too (so two steps demonstrably run at once; on its
own after `RENDEZVOUS_S`), and lets go.
"""


import json
import os
import sys
import time
from pathlib import Path

import dagster as dg

from pecn_assets.gpu import claimed_gpus, gpu_asset_args
from pecn_assets.resources import PecnSettings

RENDEZVOUS_S = 60.0
HOLD_S = 1.0


class ProbeConfig(dg.Config):
    marker_dir: str


def _probe(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, **gpu_asset_args())
    def _step(context: dg.AssetExecutionContext, config: ProbeConfig, settings: PecnSettings) -> dg.MaterializeResult:
        markers = Path(config.marker_dir)
        with claimed_gpus(context, settings, 1) as claim:
            start = time.time()
            (markers / f"{name}.holding").write_text(json.dumps(list(claim.devices)))
            deadline = time.monotonic() + RENDEZVOUS_S
            while len(list(markers.glob("*.holding"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            met = len(list(markers.glob("*.holding"))) >= 2
            time.sleep(HOLD_S)
            end = time.time()
            (markers / f"{name}.holding").unlink()
        record = {"step": name, "run_id": context.run.run_id, "devices": list(claim.devices),
                  "start": start, "end": end, "met_another": met, "pid": os.getpid()}
        (markers / f"{name}.json").write_text(json.dumps(record))
        return dg.MaterializeResult(metadata={"gpu_devices": list(claim.devices)})

    return _step


ASSETS = [_probe(n) for n in ("gpu_a1", "gpu_a2", "gpu_b1", "gpu_b2")]


def _defs(lock_dir: str = "", devices: str = "") -> dg.Definitions:
    settings = PecnSettings(data_dir="/tmp", outputs_dir="/tmp", results_dir="/tmp",
                            gpu_lock_dir=lock_dir, gpu_devices=devices)
    jobs = [dg.define_asset_job(job, selection=[f"gpu_{job[-1]}1", f"gpu_{job[-1]}2"],
                                executor_def=dg.multiprocess_executor) for job in ("run_a", "run_b")]
    return dg.Definitions(assets=ASSETS, jobs=jobs, resources={"settings": settings})


def main(argv: "list[str]") -> int:
    job_name, marker_dir, lock_dir, devices = argv
    run_config = {"ops": {a.key.to_user_string(): {"config": {"marker_dir": marker_dir}} for a in ASSETS
                          if a.key.to_user_string()[4] == job_name[-1]},
                  "resources": {"settings": {"config": {"data_dir": "/tmp", "outputs_dir": "/tmp",
                                                        "results_dir": "/tmp", "gpu_lock_dir": lock_dir,
                                                        "gpu_devices": devices}}},
                  "execution": {"config": {"max_concurrent": 2}}}
    recon = dg.reconstructable(_job_a if job_name == "run_a" else _job_b)
    with dg.DagsterInstance.get() as instance:
        with dg.execute_job(recon, instance=instance, run_config=run_config) as result:
            print(json.dumps({"job": job_name, "run_id": result.run_id, "success": result.success}))
            return 0 if result.success else 1


def _job_a() -> dg.JobDefinition:
    return _defs().resolve_job_def("run_a")


def _job_b() -> dg.JobDefinition:
    return _defs().resolve_job_def("run_b")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
