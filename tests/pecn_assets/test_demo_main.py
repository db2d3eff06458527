"""`python -m pecn_assets.tools.demo`'s `main()` itself: the deployment from the environment, a run of a
dead earlier demo process released (run failed, its `gpu` pool slot freed), the plan, the exit code."""

import subprocess
import uuid
from pathlib import Path

import dagster as dg
import pytest

from pecn_assets.build import build_definitions
from pecn_assets.partitions import add_seeds
from pecn_assets.runs import PID_TAG
from pecn_assets.tools import demo
from pecn_assets.tools.materialise import plan
from pecn_ml.deployment import Deployment

pytestmark = pytest.mark.xdist_group("smoke_graph")  # reads the smoke graph's data folder


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def demo_env(smoke_graph, tmp_path, monkeypatch):
    """The smoke deployment's data with a fresh DAGSTER_HOME, outputs and results."""
    env = {**smoke_graph.env, "DAGSTER_HOME": str(tmp_path / "home"), "PECN_OUTPUTS_DIR": str(tmp_path / "out"),
           "PECN_RESULTS_DIR": str(tmp_path / "results")}
    Path(env["DAGSTER_HOME"]).mkdir()
    (Path(env["DAGSTER_HOME"]) / "dagster.yaml").write_text((smoke_graph.dagster_home / "dagster.yaml").read_text())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def stale_run(home: str, pid: int) -> str:
    """A STARTED run of an earlier demo process `pid` that holds the `gpu` pool slot."""
    run_id = str(uuid.uuid4())
    with dg.DagsterInstance.from_config(home) as instance:
        instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                                       tags={PID_TAG: str(pid)}))
        instance.event_log_storage.set_concurrency_slots("gpu", 2)  # room for both test runs
        assert instance.event_log_storage.claim_concurrency_slot("gpu", run_id, "ip2p_model").is_claimed
    return run_id


def test_main_releases_stale_runs_and_materialises(demo_env, capsys):
    home = demo_env["DAGSTER_HOME"]
    stale, alive = stale_run(home, dead_pid()), stale_run(home, 1)  # pid 1 is alive: not touched
    assert demo.main(["--only", "filtered_annotations"]) == 0
    out = capsys.readouterr().out
    assert f"released stale run {stale}" in out and alive not in out
    with dg.DagsterInstance.from_config(home) as instance:
        assert instance.get_run_by_id(stale).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive).status == dg.DagsterRunStatus.STARTED
        claimed = {slot.run_id for slot in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots}
        assert stale not in claimed and alive in claimed
        record = instance.fetch_materializations(dg.AssetKey("filtered_annotations"), limit=1).records[0]
        assert record.run_id in out
        run = instance.get_run_by_id(record.run_id)
        assert run.tags[PID_TAG].isdigit()  # its own runs carry the pid a later main() checks


def test_main_stops_at_a_failed_run_with_exit_code_1(demo_env, capsys):
    # frame_cache reads the filtered_annotations artifact, which this fresh instance never made
    assert demo.main(["--only", "frame_cache"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "stopped at a failed run" in out


def test_the_plan_materialises_every_asset_once_per_partition_upstream_first():
    for seeds in ((0,), (0, 1)):
        defs = build_definitions(Deployment(profile="demo", seeds=seeds))
        instance = dg.DagsterInstance.ephemeral()
        add_seeds(instance, seeds)
        steps = plan(defs, instance)
        graph = defs.resolve_asset_graph()
        order = [asset for asset, _ in steps]
        assert sorted(order) == sorted(k.to_user_string() for k in graph.materializable_asset_keys)
        for asset in order:  # every upstream asset comes first
            upstream = {k.to_user_string() for k in graph.get(dg.AssetKey(asset)).parent_keys}
            assert {u for u in upstream if u in order} <= set(order[:order.index(asset)]), asset
        keys = dict(steps)
        assert len(keys["ip2p_model"]) == len(keys["evaluation"]) == 6 * len(seeds)  # six variants
        assert keys["frame_cache"] == ["96"] and keys["t_tests"] == [None]  # the demo's models read 96 px
