"""Launching runs on a running PECN webserver with Dagster's Python GraphQL client.

The webserver (tests/pecn_test_support/ui_server.py) serves a copy of the smoke graph's DAGSTER_HOME.
Its dagster.yaml uses the `DefaultRunCoordinator`: a submitted run is launched by the webserver at
once. (With the default `QueuedRunCoordinator` the run would wait in the queue for the daemon,
which only `dagster dev` or `dagster-daemon run` starts; see ui_server.py for why the tests do
without the daemon.)

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution("__ASSET_JOB", asset_selection=[AssetKey("filtered_annotations")])
    client.get_run_status(run_id)   # DagsterRunStatus.QUEUED / STARTED / ... / SUCCESS
"""

from __future__ import annotations

import time

import dagster as dg
import pytest

from pecn_test_support import ui_server

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke_graph")]

ASSET_JOB = "__ASSET_JOB"  # the implicit job of all assets (one in Dagster 1.13)
RUN_TIMEOUT_S = 300
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}




@pytest.fixture(scope="module")
def client(ui):
    from dagster_graphql import DagsterGraphQLClient

    return DagsterGraphQLClient(ui.host, port_number=ui.port)


@pytest.fixture(scope="module")
def instance(ui):
    with dg.DagsterInstance.from_config(str(ui.dagster_home)) as inst:
        yield inst


def _poll_status(client, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> tuple[dg.DagsterRunStatus, list]:
    """Poll `get_run_status` until the run has finished: (final status, statuses seen in order)."""
    seen: list[dg.DagsterRunStatus] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        status = client.get_run_status(run_id)
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in FINISHED:
            return status, seen
        time.sleep(1.0)
    raise TimeoutError(f"run {run_id} not finished after {timeout_s}s (statuses seen: {seen})")


def _latest(instance, asset: str, partition: str | None = None) -> dg.EventLogRecord:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                              asset_partitions=[partition] if partition else None), limit=1).records
    assert records, f"{asset} {partition or ''} was never materialised"
    return records[0]


def test_submit_filtered_annotations_and_poll_to_success(ui, client, instance):
    before = _latest(instance, "filtered_annotations").asset_materialization
    run_id = client.submit_job_execution(ASSET_JOB, asset_selection=[dg.AssetKey("filtered_annotations")],
                                         tags={"pecn/test": "graphql"})
    status, seen = _poll_status(client, run_id)
    assert status == dg.DagsterRunStatus.SUCCESS, (seen, ui_server.run_failure_report(instance, run_id, ui))

    run = instance.get_run_by_id(run_id)
    assert run.job_name == ASSET_JOB and run.tags["pecn/test"] == "graphql"
    assert run.asset_selection == {dg.AssetKey("filtered_annotations")}
    after = _latest(instance, "filtered_annotations")
    assert after.run_id == run_id
    assert after.asset_materialization.tags["dagster/data_version"] == before.tags["dagster/data_version"]
    assert after.asset_materialization.metadata["n_train"].value == before.metadata["n_train"].value


def test_submit_one_frame_cache_partition(ui, client, instance):
    """A partition is chosen with the `dagster/partition` tag; the rebuilt cache decodes nothing again."""
    from pecn_ml.profiles import get_profile

    partition = str(get_profile("smoke").pix2pix_resolution)
    before = _latest(instance, "frame_cache", partition)
    run_id = client.submit_job_execution(ASSET_JOB, asset_selection=[dg.AssetKey("frame_cache")],
                                         tags={"dagster/partition": partition})
    status, seen = _poll_status(client, run_id)
    assert status == dg.DagsterRunStatus.SUCCESS, (seen, ui_server.run_failure_report(instance, run_id, ui))

    after = _latest(instance, "frame_cache", partition)
    assert after.run_id == run_id and after.partition_key == partition
    meta = after.asset_materialization.metadata
    assert meta["decoded"].value == 0  # nothing changed: every video (and recorded failure) reused
    assert meta["reused"].value + meta["failed"].value == meta["videos"].value > 0
    assert (after.asset_materialization.tags["dagster/data_version"]
            == before.asset_materialization.tags["dagster/data_version"])
    assert after.storage_id > before.storage_id


def test_unknown_job_is_a_client_error(client):
    from dagster_graphql import DagsterGraphQLClientError

    with pytest.raises(DagsterGraphQLClientError, match="no_such_job"):
        client.submit_job_execution("no_such_job")
