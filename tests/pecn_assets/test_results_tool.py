"""docs/RESULTS.md is generated from an instance: every number is the evaluation's own."""

import re

import pytest

from pecn_assets.tools import results

pytestmark = pytest.mark.xdist_group("smoke_graph")


def test_results_document_comes_from_the_instance(smoke_graph, tmp_path):
    assert smoke_graph.ok
    data = results.collect(smoke_graph.instance)
    evaluations = results.latest_by_partition(smoke_graph.instance, "evaluation")
    assert len(data["provenance"]) == len(evaluations) > 0
    text = results.render(data, {"commit": "abc123", "machine": "test box", "generated": "now"}, "home")
    assert "commit `abc123`" in text and "test box" in text
    # each partition's model SSIM on each set, as the materialisation's metadata recorded it
    for partition, record in evaluations.items():
        seed, variant = partition.split("|")
        meta = record.asset_materialization.metadata
        for eval_set in results.load_artifact(record).sets:
            ssim = f"{meta[f'{eval_set}_ssim_mean'].value:.4f}"
            row = re.compile(rf"^\| {eval_set} \| {variant} \| {seed} \| \d+ \| {ssim} \|", re.M)
            assert row.search(text), (partition, eval_set, ssim)
        assert f"| {seed}\\|{variant} | {record.run_id[:8]} |" in text   # the key's | escaped


def test_results_refuse_an_empty_instance(tmp_path):
    import dagster as dg

    with dg.DagsterInstance.ephemeral() as instance, pytest.raises(SystemExit, match="make demo"):
        results.collect(instance)


def test_stamp_names_the_commit(tmp_path):
    s = results.stamp(results.Path(__file__).parent)
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?", s["commit"]) and "CPU cores" in s["machine"]
