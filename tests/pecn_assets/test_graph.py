"""The whole asset graph on the smoke profile: every asset materialises, metadata contracts hold,
and lineage answers "which checkpoint produced this number"."""

import json
from pathlib import Path

import dagster as dg
import pytest

from pecn_ml.utils.files import sha256_file

pytestmark = pytest.mark.xdist_group("smoke_graph")


def latest(instance, asset, partition=None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                              asset_partitions=[partition] if partition else None), limit=1).records
    assert records, f"{asset} {partition} was not materialised"
    return records[0]


def meta(record) -> dict:
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}


def test_definitions_load():
    from pecn_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_annotations", "raw_videos", "filtered_annotations", "frame_cache", "pacnet",
            "progress_estimates", "ip2p_model", "evaluation", "copy_frame_baseline", "t_tests",
            "summary_report"} <= keys


def test_whole_graph_materialises(smoke_graph):
    assert smoke_graph.ok
    inst = smoke_graph.instance
    for key in ["96", "128", "224"]:
        m = meta(latest(inst, "frame_cache", key))
        assert m["videos"] == m["decoded"] + m["reused"] + m["failed"]
    for head in ["regression", "classification"]:
        m = meta(latest(inst, "pacnet", head))
        assert {"val_mae", "baseline_mae", "checkpoint", "checkpoint_sha256"} <= set(m)
        assert m["checkpoint_sha256"] == sha256_file(Path(m["checkpoint"]) / "model.safetensors")
    for variant in ["next1", "next1_progress", "next5", "next5_progress"]:
        m = meta(latest(inst, "ip2p_model", variant))
        assert {"checkpoint", "checkpoint_sha256", "final_loss"} <= set(m)
    report = meta(latest(inst, "summary_report"))
    assert Path(report["workbook"]).exists()
    assert "next1" in report["summary"]


def test_evaluation_records_the_checkpoint_it_sampled(smoke_graph):
    inst = smoke_graph.instance
    for eval_set in ["basic", "backforth"]:
        for variant in ["next1", "next5_progress"]:
            ev = meta(latest(inst, "evaluation", f"{eval_set}|{variant}"))
            model_record = latest(inst, "ip2p_model", variant)
            model = meta(model_record)
            assert ev["checkpoint_sha256"] == model["checkpoint_sha256"]
            assert ev["ip2p_model_run_id"] == model_record.run_id
            results = json.loads(Path(ev["results_json"]).read_text())
            assert results["n"] == ev["n"] > 0
            assert results["metadata"]["checkpoint_sha256"] == model["checkpoint_sha256"]
            assert ev["frame_cache_version"] and ev["annotations_version"]
    shas = meta(latest(inst, "t_tests"))["model_checkpoint_sha256"]
    assert shas["next1/basic"] == meta(latest(inst, "ip2p_model", "next1"))["checkpoint_sha256"]


def test_retrained_model_changes_the_recorded_sha(smoke_graph):
    """Retrain one variant with another seed: its evaluation then records the new sha."""
    from pecn_assets.definitions import ASSETS

    inst, resources = smoke_graph.instance, smoke_graph.resources
    before = meta(latest(inst, "ip2p_model", "next1"))["checkpoint_sha256"]
    assert meta(latest(inst, "evaluation", "basic|next1"))["checkpoint_sha256"] == before
    dg.materialize(ASSETS, selection=["ip2p_model"], partition_key="next1", instance=inst,
                   resources=resources,
                   run_config={"ops": {"ip2p_model": {"config": {"seed": 1234}}}})
    after_record = latest(inst, "ip2p_model", "next1")
    after = meta(after_record)["checkpoint_sha256"]
    assert after != before
    dg.materialize(ASSETS, selection=["evaluation"], partition_key="basic|next1", instance=inst,
                   resources=resources)
    ev_record = latest(inst, "evaluation", "basic|next1")
    ev = meta(ev_record)
    assert ev["checkpoint_sha256"] == after
    assert ev["ip2p_model_run_id"] == after_record.run_id
    assert ev["ip2p_model_event_storage_id"] == after_record.storage_id
