"""The training assets with K = 2 processes (gloo on the CPU) against K = 1 at the same global batch,
on the smoke data: ip2p_model and pacnet, each materialised twice in a fresh instance that reads
the smoke graph's upstream artifacts (a copy of its artifact store) and writes to its own folders.

Tolerance: the K = 2 ranks see exactly the K = 1 samples and randomness, split in two; what can
differ is the order of float sums (a mean over 2 x B/2 instead of B, gradients all-reduced over
gloo), i.e. float32 rounding: relative differences of a few ulps per step, compounded over the few
steps of the smoke run. We allow rtol 1e-5 on every loss value and on the PAC-Net val_mae and test_mae
(measured: about 2e-7)."""

import shutil

import dagster as dg
import numpy as np
import pytest

from pecn_assets.build import build_definitions
from pecn_assets.partitions import add_seeds, deployment_seeds
from pecn_ml.deployment import Deployment

pytestmark = pytest.mark.xdist_group("smoke_graph")

RTOL = 1e-5
PARTITION = "0|next1"


@pytest.fixture(scope="module")
def k_defs(smoke_graph, tmp_path_factory):
    """The smoke deployment with its own outputs folder and a copy of the artifact store."""
    root = tmp_path_factory.mktemp("multi_process")
    settings = smoke_graph.resources["settings"]
    artifacts = root / "outputs" / "_artifacts"
    shutil.copytree(settings.outputs_path() / "_artifacts", artifacts)
    local = settings.model_copy(update={"outputs_dir": str(root / "outputs")})
    return build_definitions(Deployment(profile="smoke", artifacts_dir=str(artifacts)), seeds=(0, 1),
                             settings=local, models=smoke_graph.resources["models"],
                             tracking=smoke_graph.resources["tracking"])


def _materialize(defs, asset: str, partition: str, config: dict) -> dict:
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()
    add_seeds(instance, deployment_seeds(defs))  # the seed partitions live in the instance
    result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(asset)],
                                    partition_key=partition, raise_on_error=False,
                                    run_config={"ops": {asset: {"config": config}}})
    failures = [e.step_failure_data.error.message for e in result.all_events
                if e.is_step_failure and e.step_failure_data.error]
    assert result.success, failures
    (event,) = [e for e in result.get_asset_materialization_events()]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_ip2p_model_with_two_processes_matches_one(k_defs, tmp_path):
    import torch
    from PIL import Image

    from pecn_ml.sampling import load_pipeline

    one = _materialize(k_defs, "ip2p_model", PARTITION, {"train_processes": 1, "train_batch_size": 4})
    two = _materialize(k_defs, "ip2p_model", PARTITION, {"train_processes": 2, "train_batch_size": 2})
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["global_batch_size"] == two["global_batch_size"] == 4 * one["gradient_accumulation_steps"]
    assert sorted(r["rank"] for r in two["ranks"]) == [0, 1] and len({r["pid"] for r in two["ranks"]}) == 2
    assert one["train_pairs"] >= one["global_batch_size"] * one["steps"]  # no padded batch in the comparison
    assert len(two["loss_values"]) == len(one["loss_values"]) == one["steps"]
    np.testing.assert_allclose(two["loss_values"], one["loss_values"], rtol=RTOL)
    assert two["checkpoint"] != one["checkpoint"]  # every run its own folder

    pipe = load_pipeline(two["checkpoint"], torch.device("cpu"), torch.float32)
    r = int(one["train_config"]["resolution"])
    image = pipe("moving something from left to right", image=Image.new("RGB", (r, r)), num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (r, r, 3) and np.isfinite(image).all()


def test_pacnet_with_two_processes_matches_one(k_defs):
    one = _materialize(k_defs, "pacnet", "regression", {"train_processes": 1, "batch_size": 4})
    two = _materialize(k_defs, "pacnet", "regression", {"train_processes": 2, "batch_size": 2})
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["global_batch_size"] == two["global_batch_size"] == 4
    assert sorted(r["rank"] for r in two["ranks"]) == [0, 1]
    np.testing.assert_allclose(two["train_loss_values"], one["train_loss_values"], rtol=RTOL)
    np.testing.assert_allclose(two["val_mae"], one["val_mae"], rtol=RTOL)
    np.testing.assert_allclose(two["baseline_mae"], one["baseline_mae"], rtol=RTOL)
    # the test score: the chosen model on the evaluation videos, every rank predicting a shard
    assert one["num_test"] == two["num_test"] > 0 and one["selection_split"] != two["selection_split"]
    np.testing.assert_allclose(two["test_mae"], one["test_mae"], rtol=RTOL)
