"""The experiment sweep run for real, in-process, on the smoke data: the schedule's run requests
train the six variants (the seed's four and the two shuffled-progress controls) for both training seeds, then the sensor's requests evaluate each trained
model on both eval sets."""

from datetime import datetime, timezone

import dagster as dg
import pytest

from pecn_assets.jobs import SWEEP_TAG
from pecn_ml.variants import VARIANTS

pytestmark = pytest.mark.xdist_group("smoke_graph")


def _run_requests(defs, job_name, requests, instance):
    """Execute each RunRequest in-process as the daemon would launch it (tags, partition)."""
    job = defs.resolve_job_def(job_name)
    results = []
    for request in requests:
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                        tags=request.tags)
        assert result.success, request.partition_key
        results.append(result)
    return results


def test_sweep_backfill_runs_in_dependency_order(smoke_graph):
    inst, defs = smoke_graph.instance, smoke_graph.defs
    experiment_sweep = defs.get_schedule_def("experiment_sweep")
    sweep_evaluations = defs.get_sensor_def("sweep_evaluations")

    # a sensor cursor at "now": only the sweep's own materialisations count
    last = inst.fetch_materializations(dg.AssetKey("ip2p_model"), limit=1).records[0].storage_id
    tick = datetime(2026, 11, 28, 3, 0, tzinfo=timezone.utc)
    train_requests = list(experiment_sweep(dg.build_schedule_context(instance=inst,
                                                                     scheduled_execution_time=tick)))
    assert sorted(r.partition_key for r in train_requests) == sorted(f"{seed}|{v}" for seed in (0, 1) for v in VARIANTS)
    assert len(train_requests) == 2 * 6
    trained = _run_requests(defs, "sweep_train", train_requests, inst)
    sweep_id = train_requests[0].tags[SWEEP_TAG]

    result = sweep_evaluations(dg.build_sensor_context(instance=inst, cursor=str(last)))
    eval_keys = sorted(r.partition_key for r in result.run_requests)
    assert eval_keys == sorted(r.partition_key for r in train_requests)  # each trained model, once
    evaluated = _run_requests(defs, "sweep_evaluate", result.run_requests, inst)

    # each evaluation started after its variant's training finished, and used that checkpoint
    train_end = {r.dagster_run.tags["dagster/partition"]: inst.get_run_stats(r.run_id).end_time
                 for r in trained}
    for run in evaluated:
        key = run.dagster_run.tags["dagster/partition"]  # seed|variant (dims by name)
        assert run.dagster_run.tags[SWEEP_TAG] == sweep_id
        assert inst.get_run_stats(run.run_id).start_time >= train_end[key]
        mats = run.get_asset_materialization_events()
        metadata = mats[0].step_materialization_data.materialization.metadata
        model = inst.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("ip2p_model"), asset_partitions=[key]),
            limit=1).records[0]
        assert metadata["checkpoint_sha256"].value == model.asset_materialization.metadata["checkpoint_sha256"].value
        assert {"basic_ssim_mean", "backforth_ssim_mean"} <= set(metadata)
