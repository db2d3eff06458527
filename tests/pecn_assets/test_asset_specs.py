"""Every asset of the real Definitions: group, one-line description, kinds, code version, pool, retries."""

import dagster as dg
import pytest

from pecn_assets.gpu import GPU_POOL, GPU_RETRY

GROUPS = {"data", "pretrained", "progress", "pix2pix", "evaluation"}
GPU_ASSETS = {"pacnet", "progress_estimates", "ip2p_model", "evaluation"}
SOURCES = {"raw_annotations", "raw_videos"}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from pecn_assets.definitions import defs

    return defs


@pytest.fixture(scope="module")
def nodes(defs) -> dict:
    return {n.key.to_user_string(): n for n in defs.resolve_asset_graph().asset_nodes}


def test_the_graph_has_the_expected_assets(nodes):
    assert GPU_ASSETS | SOURCES <= set(nodes)
    assert {k for k, n in nodes.items() if n.is_observable and not n.is_materializable} == SOURCES


def test_every_asset_has_a_group_and_a_one_line_description(nodes):
    for key, node in nodes.items():
        assert node.group_name in GROUPS, f"{key}: group {node.group_name!r} not in {sorted(GROUPS)}"
        description = (node.description or "").strip()
        assert description, f"{key} has no description"
        assert "\n" not in description, f"{key}: description is not one line: {description!r}"


def test_every_materialised_asset_has_kinds_and_a_code_version(nodes):
    for key, node in nodes.items():
        if key in SOURCES:  # observed, not computed: their data version is the file hash
            continue
        assert node.kinds, f"{key} declares no kinds"
        assert node.code_version, f"{key} has no code_version (code changes would not mark it stale)"


def test_gpu_assets_use_the_gpu_pool_and_cpu_assets_no_pool(nodes):
    for key, node in nodes.items():
        expected = {GPU_POOL} if key in GPU_ASSETS else set()
        assert set(node.pools or ()) == expected, f"{key}: pools {node.pools}, expected {expected}"


def test_gpu_assets_carry_the_gpu_retry_policy(defs):
    for key in GPU_ASSETS:
        op = defs.get_assets_def(key).op
        assert op.retry_policy == GPU_RETRY, f"{key}: retry policy {op.retry_policy}"
        assert op.pool == GPU_POOL
    assert GPU_RETRY.max_retries >= 1  # a retried trainer resumes from its checkpoint (resume=True)


def test_the_deployment_is_chosen_once_and_a_mismatch_fails_at_load(tmp_path):
    from dataclasses import replace

    from pecn_assets.build import build_definitions
    from pecn_assets.partitions import add_seeds, deployment_seeds
    from pecn_ml.deployment import Deployment
    from pecn_ml.profiles import get_profile

    deployment = Deployment.from_env({"PECN_PROFILE": "smoke", "PECN_SEEDS": "3, 4",
                                      "PECN_OUTPUTS_DIR": str(tmp_path / "out")})
    defs = build_definitions(deployment)
    instance = dg.DagsterInstance.ephemeral()
    assert add_seeds(instance, deployment_seeds(defs)) == ["3", "4"]
    assert defs.get_assets_def("evaluation").partitions_def.get_partition_keys(
        dynamic_partitions_store=instance)[:2] == ["3|next1", "3|next1_progress"]
    assert defs.resources["settings"].outputs_dir == str(tmp_path / "out")
    assert defs.resources["io_manager"].root == str(tmp_path / "out" / "_artifacts")
    assert defs.resources["settings"].data_dir.endswith(get_profile("smoke").data_dir)
    assert deployment_seeds(build_definitions(Deployment(profile="full"))) == (42,)  # by default: the profile's
    with pytest.raises(ValueError, match="pix2pix_resolution 64"):
        build_definitions(profile=replace(get_profile("smoke"), pix2pix_resolution=64))
    with pytest.raises(ValueError, match="distinct"):
        build_definitions(Deployment(profile="smoke"), seeds=(1, 1))
    with pytest.raises(ValueError, match="PECN_SEEDS"):
        Deployment.from_env({"PECN_SEEDS": "0,one"})
    with pytest.raises(ValueError, match="unknown PECN profile"):
        build_definitions(Deployment.from_env({"PECN_PROFILE": "tiny"}))


def test_every_input_is_declared_and_no_dependency_is_unused(defs):
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
               for k in graph.materializable_asset_keys}
    assert "progress_estimates" in parents["ip2p_model"] and "progress_estimates" in parents["evaluation"]
    assert parents["summary_report"] == {"t_tests", "evaluation", "copy_frame_baseline"}
    assert parents["evaluation"] == {"ip2p_model", "filtered_annotations", "frame_cache", "progress_estimates"}
    for key in graph.materializable_asset_keys:  # every upstream is an argument of the asset (or a source)
        op_inputs = {k.to_user_string() for k in defs.get_assets_def(key).keys_by_input_name.values()}
        assert parents[key.to_user_string()] - {"raw_annotations", "raw_videos"} <= op_inputs, key


def test_model_and_evaluation_checks_are_registered(defs):
    checks = {(k.asset_key.to_user_string(), k.name): spec.blocking
              for c in defs.asset_checks for k, spec in zip(c.check_keys, c.check_specs)}
    assert checks == {("ip2p_model", "loss_decreased"): True, ("pacnet", "beats_mean_predictor"): True,
                      ("evaluation", "samples_and_ranges"): True, ("evaluation", "beats_copy_frame"): False,
                      ("evaluation", "predicts_motion"): False}
