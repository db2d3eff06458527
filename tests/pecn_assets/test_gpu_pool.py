"""The `gpu` pool keeps GPU steps apart while CPU steps run in parallel (multiprocess executor).

One run of stand-in assets, built with the same `gpu_asset_args()` as the real GPU assets, in a
temporary DAGSTER_HOME that holds a copy of the project's dagster_home/dagster.yaml (pool limit 1).
Each GPU stand-in takes an exclusive lock file while it "computes" and fails if another holds it;
the CPU stand-ins wait for each other (a rendezvous), so the run only succeeds if they overlap.
The recorded STEP_START / STEP_SUCCESS timestamps must then show the same.
"""

import os
import shutil
import time
from itertools import combinations
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableJob

from pecn_assets.gpu import GPU_POOL, gpu_asset_args

REPO = Path(__file__).resolve().parents[2]
N_GPU, N_CPU = 3, 2
RENDEZVOUS_TIMEOUT_S = 300.0


class ProbeConfig(dg.Config):
    marker_dir: str
    seconds: float = 1.0


def _gpu_step(i: int) -> dg.AssetsDefinition:
    @dg.asset(name=f"gpu_step_{i}", **gpu_asset_args())
    def _step(config: ProbeConfig) -> None:
        lock = Path(config.marker_dir) / "gpu.lock"
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise dg.Failure(f"gpu_step_{i} started while another GPU step held the GPU",
                             allow_retries=False) from None
        try:
            time.sleep(config.seconds)
        finally:
            lock.unlink()

    return _step


def _cpu_step(i: int) -> dg.AssetsDefinition:
    @dg.asset(name=f"cpu_step_{i}")
    def _step(config: ProbeConfig) -> None:
        markers = Path(config.marker_dir)
        (markers / f"cpu_{i}.started").touch()
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
        while len(list(markers.glob("cpu_*.started"))) < N_CPU:
            if time.monotonic() > deadline:
                raise dg.Failure("the CPU steps never ran at the same time", allow_retries=False)
            time.sleep(0.05)
        time.sleep(config.seconds)

    return _step


ASSETS = [_gpu_step(i) for i in range(N_GPU)] + [_cpu_step(i) for i in range(N_CPU)]
pool_probe_job = dg.Definitions(
    assets=ASSETS, jobs=[dg.define_asset_job("pool_probe", executor_def=dg.multiprocess_executor)],
).resolve_job_def("pool_probe")


@pytest.fixture
def pool_instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _intervals(instance, run_id: str) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for record in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START,
                                                     dg.DagsterEventType.STEP_SUCCESS}):
        target = starts if record.dagster_event.event_type == dg.DagsterEventType.STEP_START else ends
        target[record.step_key] = record.timestamp
    return {k: (starts[k], ends[k]) for k in starts}


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_project_instance_limits_every_pool_to_one():
    config = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text(encoding="utf-8"))
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert config["run_monitoring"]["enabled"] and config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0


def test_gpu_steps_never_overlap_while_cpu_steps_run_in_parallel(pool_instance, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    ops = {a.key.to_user_string(): {"config": {"marker_dir": str(markers)}} for a in ASSETS}
    run_config = {"ops": ops, "execution": {"config": {
        "max_concurrent": N_GPU + N_CPU,
        "start_method": {"forkserver": {"preload_modules": ["dagster", "pecn_assets.gpu"]}}}}}
    recon = ReconstructableJob.for_file(str(Path(__file__).resolve()), "pool_probe_job")
    with dg.execute_job(recon, instance=pool_instance, run_config=run_config) as result:
        failures = [e.step_failure_data.error.message for e in result.all_events
                    if e.is_step_failure and e.step_failure_data.error]
        assert result.success, failures
        run_id = result.run_id

    spans = _intervals(pool_instance, run_id)
    gpu = {k: v for k, v in spans.items() if k.startswith("gpu_step_")}
    cpu = {k: v for k, v in spans.items() if k.startswith("cpu_step_")}
    assert len(gpu) == N_GPU and len(cpu) == N_CPU, spans
    for (ka, a), (kb, b) in combinations(sorted(gpu.items()), 2):
        assert not _overlap(a, b), f"{ka} {a} and {kb} {b} ran at the same time"
    for (ka, a), (kb, b) in combinations(sorted(cpu.items()), 2):
        assert _overlap(a, b), f"{ka} {a} and {kb} {b} did not run in parallel"

    blocked = [r.message for r in pool_instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
               if f"limit for pool {GPU_POOL}" in (r.message or "")]
    assert blocked, "no step was ever held back by the gpu pool"
