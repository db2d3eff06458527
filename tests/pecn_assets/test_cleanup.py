"""The explicit cleanup of training-run folders, on the smoke graph: it keeps every folder a latest
materialisation names (a superseded checkpoint that an evaluation still scored included), runs
that are not finished and folders of unknown runs, and superseded ones unless asked to delete
them; a dry run deletes nothing. (A moved outputs folder: test_cleanup_identity.py.)"""

from pathlib import Path

import dagster as dg
import pytest

from pecn_assets.cleanup import all_materializations, cleanup, plan_cleanup
from pecn_assets.tools.cleanup import main
from pecn_ml.sampling import checkpoint_sha256

pytestmark = pytest.mark.xdist_group("smoke_graph")
KEY = "1|next5"


def meta(instance, asset, partition=None) -> dict:
    record = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1).records[0]
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}


def referenced_paths(instance) -> dict[Path, str]:
    """Every path in the metadata of a latest materialisation -> the asset partition naming it."""
    return {Path(v.path).resolve(): who for who, latest, record in all_materializations(instance) if latest
            for v in record.asset_materialization.metadata.values()
            if isinstance(v, dg.PathMetadataValue) and v.path}


def materialize(smoke_graph, asset: str, config=None) -> None:
    result = smoke_graph.defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=smoke_graph.instance, asset_selection=[dg.AssetKey(asset)], partition_key=KEY,
        run_config={"ops": {asset: {"config": config}}} if config else None)
    assert result.success


def test_cleanup_deletes_only_what_no_latest_materialisation_names(smoke_graph, capsys):
    inst = smoke_graph.instance
    outputs = Path(smoke_graph.env["PECN_OUTPUTS_DIR"])
    old = Path(meta(inst, "ip2p_model", KEY)["run_dir"])
    materialize(smoke_graph, "ip2p_model", {"learning_rate": 2e-3})
    new = Path(meta(inst, "ip2p_model", KEY)["run_dir"])
    assert new != old
    plan = plan_cleanup(inst, outputs)
    assert plan.keep[old.resolve()] == f"named by the latest materialisation of evaluation/{KEY}"
    assert plan.keep[new.resolve()] == f"named by the latest materialisation of ip2p_model/{KEY}"

    materialize(smoke_graph, "evaluation")  # now nothing names the old checkpoint any more
    unfinished = dg.DagsterRun(job_name="__ASSET_JOB", run_id="0" * 8 + "-0000-0000-0000-" + "0" * 12,
                               status=dg.DagsterRunStatus.STARTED)
    inst.add_run(unfinished)
    (old.parent / unfinished.run_id).mkdir()                       # a step of it may still be retried
    (old.parent / "not-a-run-of-this-instance").mkdir()
    plan = cleanup(inst, outputs, dry_run=True)                   # superseded: kept unless asked
    assert plan.keep[old.resolve()].startswith("superseded: named by an earlier materialisation of ")
    plan = cleanup(inst, outputs, dry_run=True, include_superseded=True)
    assert old.resolve() in plan.delete and old.is_dir()          # a dry run lists, deletes nothing
    assert plan.keep[(old.parent / unfinished.run_id).resolve()] == "run is STARTED"
    assert plan.keep[(old.parent / "not-a-run-of-this-instance").resolve()] == "run unknown to this Dagster instance"
    assert "dry run:" in capsys.readouterr().out

    plan = cleanup(inst, outputs, dry_run=False, include_superseded=True)
    assert not old.exists() and new.is_dir()
    for path, who in referenced_paths(inst).items():
        assert path.exists(), f"{who} names {path}, which the cleanup deleted"
    ev = meta(inst, "evaluation", KEY)
    assert checkpoint_sha256(ev["checkpoint"]) == ev["checkpoint_sha256"]


def test_cleanup_command_and_job_are_dry_runs_by_default(smoke_graph, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(smoke_graph.dagster_home))
    outputs = smoke_graph.env["PECN_OUTPUTS_DIR"]
    before = sorted(p for p in Path(outputs).rglob("*") if p.is_dir())
    assert main(["--outputs", outputs]) == 0
    assert "dry run:" in capsys.readouterr().out
    job = smoke_graph.defs.resolve_job_def("cleanup_checkpoints")
    result = job.execute_in_process(instance=smoke_graph.instance)
    assert result.success
    assert sorted(p for p in Path(outputs).rglob("*") if p.is_dir()) == before


def test_a_retried_step_finds_its_own_run_folder_again(tmp_path):
    """What lets a retried training step resume: the same run, the same folder; another run, another."""
    from pecn_assets.runs import run_dir

    seen = []

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
    def trainer(context: dg.AssetExecutionContext) -> None:
        folder = run_dir(tmp_path / "model", context)
        seen.append((folder, (folder / "checkpoint").exists()))
        if not seen[0][1] and len(seen) == 1:
            folder.mkdir(parents=True)
            (folder / "checkpoint").write_text("step 50")
            raise RuntimeError("preempted after a checkpoint")

    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize([trainer], instance=instance)
    assert first.success and len(seen) == 2
    assert seen[1] == (tmp_path / "model" / "runs" / first.run_id, True)  # the retry resumes there
    second = dg.materialize([trainer], instance=instance)
    assert seen[2] == (tmp_path / "model" / "runs" / second.run_id, False)  # a new run starts clean
