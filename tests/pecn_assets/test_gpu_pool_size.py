"""The `gpu` pool sized to the machine (pecn_assets/gpu_pool.py), on simulated devices: the limit
follows the configured devices // training processes, an explicit setting wins, and the places the
platform starts from (`make ui`'s command, the demo's call, the sensor) set it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from pecn_assets.gpu import GPU_POOL
from pecn_assets.gpu_pool import (RECORD_KEY, SENSOR_NAME, build_gpu_pool_sensor, claimable_devices, decide_limit,
                                  k8s_gpu_counts, size_gpu_pool)
from pecn_ml.deployment import Deployment
from pecn_ml.utils.gpu_devices import pool_slots

REPO = Path(__file__).resolve().parents[2]


def settings(devices=None, processes=1):
    return SimpleNamespace(gpu_devices=devices, train_processes=processes)


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")  # default_limit: 1
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


def pool_limit(instance):
    return {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}.get(GPU_POOL)


def test_pool_slots():
    assert [pool_slots(n, k) for n, k in ((4, 1), (4, 2), (3, 2), (8, 4), (0, 1), (1, 2))] == [4, 2, 1, 2, 1, 1]
    assert pool_slots([8, 4, 3], 2) == 4 + 2 + 1        # per node: a step's processes share one
    with pytest.raises(ValueError):
        pool_slots(4, 0)


def test_limit_follows_simulated_devices_and_processes(instance):
    assert size_gpu_pool(instance, settings("0,1,2,3")).limit == 4
    assert pool_limit(instance) == 4
    decision = size_gpu_pool(instance, settings("0,1,2,3", processes=2))
    assert (decision.limit, decision.changed, pool_limit(instance)) == (2, True, 2)
    assert "4 claimable device(s) (configured gpu_devices) // 2 training process(es)" in decision.line()
    assert not size_gpu_pool(instance, settings("0,1,2,3", processes=2)).changed   # nothing to do twice
    assert size_gpu_pool(instance, settings("")).limit == 1   # no devices (a CPU machine): one at a time
    assert instance.run_storage.get_cursor_values({RECORD_KEY}) == {RECORD_KEY: "1"}


def test_an_explicit_setting_wins(instance):
    assert size_gpu_pool(instance, settings("0,1,2,3"), Deployment(gpu_pool_limit=3)).limit == pool_limit(instance) == 3
    size_gpu_pool(instance, settings("0,1,2,3"))             # the variable removed: automatic again
    assert pool_limit(instance) == 4
    # someone sets the pool in the instance (what `dagster instance concurrency set gpu 6` does)
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, 6)
    decision = size_gpu_pool(instance, settings("0,1"))
    assert (decision.limit, decision.changed, pool_limit(instance)) == (6, False, 6)
    assert "set explicitly in the instance" in decision.reason and "automatic would be 2" in decision.reason
    # back to PECN's own number: automatic from then on
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, 4)
    assert size_gpu_pool(instance, settings("0,1")).limit == pool_limit(instance) == 2


def test_decide_limit():
    auto = (4, "why")
    assert decide_limit(*auto, explicit=2, current=6, current_from_default=False, recorded=4)[::2] == (2, True)
    assert decide_limit(*auto, explicit=None, current=None, current_from_default=False, recorded=None) \
        == (4, "why", True)
    assert decide_limit(*auto, explicit=None, current=1, current_from_default=True, recorded=None)[0] == 4
    assert decide_limit(*auto, explicit=None, current=3, current_from_default=False, recorded=2)[::2] == (3, False)
    assert decide_limit(*auto, explicit=None, current=2, current_from_default=False, recorded=2)[0] == 4
    assert Deployment.from_env({"PECN_GPU_POOL_LIMIT": ""}).gpu_pool_limit is None
    assert Deployment.from_env({"PECN_GPU_POOL_LIMIT": " 8 "}).gpu_pool_limit == 8
    with pytest.raises(ValueError, match="PECN_GPU_POOL_LIMIT"):
        Deployment.from_env({"PECN_GPU_POOL_LIMIT": "0"})


def _node(gpus, unschedulable=False, labels=None):
    return SimpleNamespace(spec=SimpleNamespace(unschedulable=unschedulable),
                           status=SimpleNamespace(allocatable={"cpu": "32", **({"nvidia.com/gpu": str(gpus)}
                                                                                  if gpus is not None else {})}))


def test_kubernetes_counts_the_gpu_nodes_allocatable_gpus():
    seen = {}

    class CoreApi:
        def list_node(self, label_selector=None):
            seen["selector"] = label_selector
            return SimpleNamespace(items=[_node(8), _node(4), _node(None), _node(8, unschedulable=True)])

    counts = k8s_gpu_counts({"pool": "gpu", "nvidia.com/gpu.present": "true"}, core_api=CoreApi())
    assert counts == [8, 4, 0] and seen["selector"] == "nvidia.com/gpu.present=true,pool=gpu"
    k8s = Deployment(executor="k8s")
    assert claimable_devices(settings(), k8s, k8s_counts=lambda: counts)[0] == [8, 4, 0]
    assert claimable_devices(settings("0,1"), k8s, k8s_counts=lambda: counts)[0] == [2]  # explicit wins
    assert pool_slots(counts, 2) == 6


def test_sensor_sizes_the_pool(instance):
    sensor = build_gpu_pool_sensor(settings("0,1,2,3,4,5"), Deployment())
    assert sensor.name == SENSOR_NAME and sensor.default_status == dg.DefaultSensorStatus.RUNNING
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert not result.run_requests and "gpu pool limit 6" in result.skip_message
    assert pool_limit(instance) == 6


def test_the_definitions_carry_the_sensor_and_the_explicit_limit():
    from pecn_assets.build import build_definitions

    deployment = Deployment.from_env({"PECN_PROFILE": "smoke", "PECN_GPU_POOL_LIMIT": "3"})
    assert deployment.gpu_pool_limit == 3
    assert build_definitions(deployment).get_sensor_def(SENSOR_NAME) is not None


def test_make_ui_command_sizes_the_pool_before_the_ui_starts(tmp_path):
    """What `make ui` runs first: `python -m pecn_assets.gpu_pool` on the instance at DAGSTER_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PECN_GPU_DEVICES": "0,1,2,3", "PECN_TRAIN_PROCESSES": "2",
           "PECN_PROFILE": "smoke"}
    env.pop("PECN_GPU_POOL_LIMIT", None)
    done = subprocess.run([sys.executable, "-m", "pecn_assets.gpu_pool"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("gpu pool limit 2 (set now): 4 claimable device(s)")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert pool_limit(inst) == 2
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "$(PY) -m pecn_assets.gpu_pool && exec $(PY) -m pecn_assets.tools.ui" in makefile
