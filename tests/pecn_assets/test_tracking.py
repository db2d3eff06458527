"""Experiment tracking through accelerate's trackers, and the trainers' hyper-parameters as run config.

TensorBoard (the default) is checked on the smoke graph's own runs; MLflow with a local SQLite
store on one PAC-Net run (needs the `mlflow-skinny` test dependency); the deployment's tracking
choice from the environment; the Launchpad's config schema with the profile's values as defaults.
"""

from pathlib import Path

import dagster as dg
import pytest

from pecn_assets.build import build_definitions
from pecn_assets.resources import Tracking
from pecn_ml.deployment import Deployment
from pecn_ml.profiles import get_profile
from pecn_ml.training.tracking import TrackingConfig, accelerator_kwargs


def latest_meta(instance, asset, partition=None) -> dict:
    record = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1).records[0]
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()} | {
        "_run_id": record.run_id}


def test_tracking_is_chosen_by_the_deployment(tmp_path):
    env = {"PECN_PROFILE": "smoke", "PECN_TRACKING": "mlflow", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    tracking = build_definitions(Deployment.from_env(env)).resources["tracking"]
    assert tracking.backend == "mlflow"
    assert tracking.mlflow_tracking_uri.endswith("m.db")
    config = tracking.for_run("pacnet_regression", {"dagster_run_id": "r", "dagster_partition": "p"})
    assert config == TrackingConfig(backend="mlflow", run_name="pacnet_regression",
                                    mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db",
                                    tags={"dagster_run_id": "r", "dagster_partition": "p"})
    assert Tracking.for_deployment(Deployment.from_env({"PECN_PROFILE": "smoke"})).backend == "tensorboard"
    assert accelerator_kwargs(TrackingConfig(backend="none"), tmp_path, "logs") == {}
    with pytest.raises(ValueError, match="backend"):
        TrackingConfig(backend="wandb")
    with pytest.raises(ValueError, match="tracking backend"):
        build_definitions(Deployment(profile="smoke"), tracking=Tracking(backend="wandb"))


def test_hyper_parameters_are_run_config_with_the_profiles_defaults():
    profile = get_profile("smoke")
    job = build_definitions(Deployment(profile="smoke")).resolve_implicit_global_asset_job_def()
    ops = job.run_config_schema.config_type.fields["ops"].config_type.fields

    def config_fields(asset):
        return ops[asset].config_type.fields["config"].config_type.fields

    ip2p = config_fields("ip2p_model")
    assert "seed" not in ip2p and "latent_cache_dir" not in ip2p  # the seed is the partition
    assert ip2p["learning_rate"].default_value == profile.pix2pix_train.learning_rate
    assert ip2p["max_train_steps"].default_value == profile.pix2pix_train.max_train_steps == 2
    assert ip2p["use_progress_estimator"].default_value is False
    pacnet = config_fields("pacnet")
    assert pacnet["epochs"].default_value == profile.pacnet_train.epochs
    assert pacnet["smooth_l1_beta"].default_value == profile.pacnet_train.smooth_l1_beta
    full = build_definitions(Deployment(profile="full")).resolve_implicit_global_asset_job_def()
    full_ip2p = full.run_config_schema.config_type.fields["ops"].config_type.fields["ip2p_model"]
    assert full_ip2p.config_type.fields["config"].config_type.fields["num_train_epochs"].default_value == 40


@pytest.mark.xdist_group("smoke_graph")
def test_tensorboard_logs_are_linked_and_tagged(smoke_graph):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    meta = latest_meta(smoke_graph.instance, "ip2p_model", "1|next5")
    assert meta["tracking"] == "tensorboard"
    log_dir = Path(meta["tensorboard_dir"])
    assert log_dir.is_dir() and log_dir.parent == Path(meta["run_dir"])
    events = EventAccumulator(str(log_dir)).Reload()
    assert "train_loss" in events.Tags()["scalars"]
    texts = set(events.Tags()["tensors"])
    for tag in ("dagster_run_id", "dagster_partition", "checkpoint_sha256"):
        assert any(tag in t for t in texts), (tag, texts)
    assert Path(latest_meta(smoke_graph.instance, "pacnet", "regression")["tensorboard_dir"]).is_dir()


@pytest.mark.xdist_group("smoke_graph")
def test_mlflow_run_is_tagged_with_run_partition_and_checkpoint(smoke_graph, tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="the mlflow-skinny test dependency is not installed")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    deployment = Deployment.from_env(smoke_graph.env)
    defs = build_definitions(deployment, tracking=Tracking(backend="mlflow", mlflow_tracking_uri=uri))
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=smoke_graph.instance, asset_selection=[dg.AssetKey("pacnet")], partition_key="classification")
    assert result.success
    meta = latest_meta(smoke_graph.instance, "pacnet", "classification")
    assert meta["tracking"] == "mlflow" and meta["mlflow_tracking_uri"] == uri
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(meta["mlflow_run_id"])
    assert run.data.tags["dagster_run_id"] == result.run_id == meta["_run_id"]
    assert run.data.tags["dagster_partition"] == "classification"
    assert run.data.tags["checkpoint_sha256"] == meta["checkpoint_sha256"]
    assert float(run.data.params["lr"]) == get_profile("smoke").pacnet_train.lr  # the values used
    assert "val/mae_pp" in run.data.metrics
