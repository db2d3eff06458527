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
