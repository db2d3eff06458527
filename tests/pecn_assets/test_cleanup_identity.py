"""The cleanup matches run folders to materialisations by identity (run id and place below the
outputs folder, and the sha256 of their files), not by absolute path: with the outputs folder
moved, its dry run lists no live folder, and no folder whose sha a materialisation names goes
without `include_superseded`. Throw-away assets that write a run folder each (seconds)."""

import contextlib
import shutil
from pathlib import Path

import dagster as dg
import pytest

from pecn_assets.cleanup import cleanup, plan_cleanup
from pecn_assets.runs import run_dir
from pecn_assets.tools.cleanup import main
from pecn_ml.utils.files import folder_manifest, manifest_sha256, sha256_file


class Place(dg.ConfigurableResource):
    outputs_dir: str


class ModelConfig(dg.Config):
    weights: str = "w"
    fail: bool = False


class ReportConfig(dg.Config):
    checkpoint_sha256: str


@dg.asset
def model(context: dg.AssetExecutionContext, config: ModelConfig, place: Place) -> dg.MaterializeResult:
    """Writes `{outputs}/next1/seed_0/runs/{run id}/model/weights.bin`, like ip2p_model."""
    folder = run_dir(Path(place.outputs_dir) / "next1" / "seed_0", context)
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_text(config.weights)
    if config.fail:
        raise RuntimeError("training failed after writing a checkpoint")
    sha = sha256_file(folder / "model" / "weights.bin")
    return dg.MaterializeResult(metadata={"checkpoint": dg.MetadataValue.path(str(folder / "model")),
                                          "checkpoint_sha256": sha, "run_dir": dg.MetadataValue.path(str(folder))},
                                data_version=dg.DataVersion(sha))


@dg.asset(deps=[model])
def report(config: ReportConfig) -> dg.MaterializeResult:
    """Names the checkpoint it summarised by sha only, like summary_report."""
    return dg.MaterializeResult(metadata={"model_checkpoint_sha256": dg.MetadataValue.json({"m": config.checkpoint_sha256})})


def _materialize(instance, outputs: Path, asset, config: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize([model, report], selection=[asset], instance=instance, raise_on_error=False,
                          resources={"place": Place(outputs_dir=str(outputs))},
                          run_config={"ops": {asset.key.to_user_string(): {"config": config}}})


@pytest.fixture
def history(tmp_path):
    """Four runs of `model` into `outputs` (a: scored by the latest report; b: superseded; c: latest;
    failed: a run that failed after writing), then the outputs folder moved to `moved`."""
    instance = dg.DagsterInstance.ephemeral()
    outputs, moved = tmp_path / "old" / "outputs", tmp_path / "disk2" / "outputs"
    runs = {}
    for name in ("a", "b", "c"):
        result = _materialize(instance, outputs, model, {"weights": name})
        assert result.success
        runs[name] = result.run_id
        if name == "a":
            sha_a = sha256_file(outputs / "next1/seed_0/runs" / runs["a"] / "model/weights.bin")
            assert _materialize(instance, outputs, report, {"checkpoint_sha256": sha_a}).success
    failed = _materialize(instance, outputs, model, {"weights": "b", "fail": True})  # same bytes as b
    assert not failed.success
    runs["failed"] = failed.run_id
    (outputs / "next1/seed_0/runs/not-a-run-of-this-instance").mkdir()
    moved.parent.mkdir()
    shutil.move(outputs, moved)
    return instance, moved, {k: moved / "next1/seed_0/runs" / v for k, v in runs.items()}


def test_a_moved_outputs_folder_lists_no_live_folder(history, capsys):
    instance, moved, folder = history
    plan = cleanup(instance, moved, dry_run=True)
    assert plan.keep[folder["c"]] == "named by the latest materialisation of model"
    assert plan.keep[folder["a"]].startswith("superseded: named by an earlier materialisation of model")
    assert plan.keep[folder["b"]].startswith("superseded: named by an earlier materialisation of model")
    # a failed run's folder that no metadata names, but whose file hashes to b's recorded sha
    assert plan.keep[folder["failed"]].startswith("superseded: its file model/weights.bin (sha256 ")
    assert plan.keep[moved / "next1/seed_0/runs/not-a-run-of-this-instance"] == "run unknown to this Dagster instance"
    assert plan.delete == {}
    assert "dry run: 0 run folder(s) to delete" in capsys.readouterr().out


def test_superseded_folders_go_only_when_asked_and_live_ones_never(history, monkeypatch, capsys):
    instance, moved, folder = history
    (folder["failed"] / "model" / "weights.bin").write_text("partial")  # now nothing names it
    plan = plan_cleanup(instance, moved)
    assert set(plan.delete) == {folder["failed"]}
    plan = cleanup(instance, moved, dry_run=False, include_superseded=True)
    assert set(plan.delete) == {folder["a"], folder["b"], folder["failed"]}
    assert plan.superseded[folder["a"]].startswith("superseded: named by an earlier materialisation of model")
    assert folder["c"].is_dir() and not folder["a"].exists() and not folder["b"].exists()
    capsys.readouterr()


def test_the_command_takes_include_superseded(history, monkeypatch, capsys):
    instance, moved, folder = history
    monkeypatch.setattr(dg.DagsterInstance, "get", classmethod(lambda cls: contextlib.nullcontext(instance)))
    assert main(["--outputs", str(moved)]) == 0
    assert "dry run: 0 run folder(s) to delete" in capsys.readouterr().out
    assert main(["--outputs", str(moved), "--include-superseded"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 3 run folder(s) to delete" in out and f"would delete {folder['b']}" in out
    assert folder["b"].is_dir()


def test_a_folder_named_by_its_manifest_sha_is_kept(tmp_path):
    """A checkpoint's `checkpoint_sha256` is the sha of its folder's manifest (every file in it):
    a run folder holding a folder of that sha is named by it, like one holding a file of a named sha."""
    instance, outputs = dg.DagsterInstance.ephemeral(), tmp_path / "outputs"
    failed = _materialize(instance, outputs, model, {"weights": "w2", "fail": True})
    assert not failed.success
    folder = outputs / "next1/seed_0/runs" / failed.run_id
    (folder / "model" / "config.json").write_text("{}")
    sha = manifest_sha256(folder_manifest(folder / "model"))
    assert plan_cleanup(instance, outputs).delete.keys() == {folder.resolve()}   # nothing names it yet
    assert _materialize(instance, outputs, report, {"checkpoint_sha256": sha}).success
    plan = plan_cleanup(instance, outputs)
    assert plan.delete == {}
    assert plan.keep[folder.resolve()] == (f"its folder model (sha256 {sha[:12]}) is named by the latest "
                                           f"materialisation of report")
