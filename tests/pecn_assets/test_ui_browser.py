"""The Dagster web UI on the smoke graph, used as a person uses it, in Debian's Chromium (Playwright).

A real webserver (tests/pecn_test_support/ui_server.py) serves a copy of the smoke graph's DAGSTER_HOME
with the smoke environment. Headless Chromium (/usr/bin/chromium, never a downloaded browser, a
fresh profile) then: opens the global asset lineage, selects `filtered_annotations` and clicks
"Materialize selected" (the run must succeed); opens an `evaluation` partition and reads the
checkpoint sha256 in its metadata (it must be the sha the `ip2p_model` materialisation recorded)
and Dagster's `input_data_version/ip2p_model` lineage tag; opens the `comparison_grid` Markdown and checks that its data-URI image
renders at the stored size. Screenshots go to test-artifacts/ui/ (kept by CI, ignored by git).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/pecn_assets/test_ui_browser.py -m "slow or not slow"
Needs /usr/bin/chromium (`sudo bash .ci/services.sh` installs it); skipped with that reason without
it, or failed under CI=true (pecn_test_support/services.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path

import dagster as dg
import pytest

from pecn_test_support import ui_server
from pecn_test_support.services import require_service

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("smoke_graph")]

CHROMIUM = "/usr/bin/chromium"
# As root in CI: no sandbox; no GPU; no connections to Google's services (the network is closed).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
RUN_TIMEOUT_S = 300


SHOTS = ui_server.ARTIFACTS / "ui"


@pytest.fixture(scope="module")
def instance(ui):
    """The webserver's instance (SQLite in its DAGSTER_HOME), read from the test process."""
    with dg.DagsterInstance.from_config(str(ui.dagster_home)) as inst:
        yield inst


@pytest.fixture(scope="session", autouse=True)
def chromium():
    """Chromium is there, checked first (session scope: before the smoke graph is built); its
    absence skips these tests, or fails them under CI=true."""
    require_service("Chromium", None if Path(CHROMIUM).exists() else
                    f"{CHROMIUM} is not installed (Debian package chromium): run `sudo bash .ci/services.sh`")


@pytest.fixture(scope="module")
def page(ui, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    # The UI greets a new instance on localhost with a "Join the Dagster community" dialog over
    # the page; record it as seen (what its Skip button does) so that it does not cover clicks.
    ui_server.graphql(ui.url, "mutation { setNuxSeen }")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            context.close()


def _shot(page, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _metadata_row(page, label: str):
    """The row of the metadata table (asset overview or partition page) whose key is `label`."""
    row = page.locator("tr").filter(has=page.get_by_text(label, exact=True)).first
    row.wait_for()
    return row


def _metadata_text(page, label: str) -> str:
    """The value shown for a metadata key: the row's last non-empty cell (after key, timestamp)."""
    cells = [t.strip() for t in _metadata_row(page, label).locator("td").all_inner_texts()]
    values = [t for t in cells if t and t != label]
    assert values, f"metadata row {label!r} shows no value (cells {cells})"
    return values[-1]


def _latest(instance, asset: str, partition: str | None = None) -> dg.EventLogRecord:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                              asset_partitions=[partition] if partition else None), limit=1).records
    assert records, f"{asset} {partition or ''} was never materialised in {instance.root_directory}"
    return records[0]


def _first_evaluation_partition(smoke_graph) -> tuple[str, str, str]:
    """(partition key, training seed, variant) of the first `evaluation` partition, e.g. 0|next1."""
    key = smoke_graph.defs.get_assets_def("evaluation").partitions_def.get_partition_keys(
        dynamic_partitions_store=smoke_graph.instance)[0]
    dims = key.keys_by_dimension
    return str(key), dims["seed"], dims["variant"]


def test_materialize_filtered_annotations_from_the_asset_graph(ui, page, instance):
    known = {r.run_id for r in instance.get_runs()}
    before = _latest(instance, "filtered_annotations").asset_materialization

    page.goto(ui.url + "/asset-groups")  # Lineage: the global asset graph, groups collapsed
    page.get_by_text("Global asset lineage").first.wait_for()
    page.locator('[data-tooltip="data"]').wait_for()
    page.locator("button:has([aria-label='settings'])").last.click()  # graph settings (gear)
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    for asset in ("raw_annotations", "frame_cache", "pacnet", "ip2p_model", "evaluation", "t_tests",
                  "summary_report"):
        page.get_by_text(asset, exact=True).first.wait_for()
    _shot(page, "asset_graph")

    page.locator("button:has([aria-label='arrow_drop_down'])").first.click()  # open `data` in the tree
    page.get_by_role("button", name="filtered_annotations").first.click()  # selects the graph node
    page.get_by_text("View in Asset Catalog").wait_for()  # its panel: description, latest materialisation
    page.get_by_text("Latest materialization").first.wait_for()
    _shot(page, "asset_selected")
    page.get_by_role("button", name="Materialize selected").click()

    run = ui_server.wait_for_new_run(instance, known)
    assert run.asset_selection == {dg.AssetKey("filtered_annotations")}
    run = ui_server.wait_for_run(instance, run.run_id, timeout_s=RUN_TIMEOUT_S)
    assert run.status == dg.DagsterRunStatus.SUCCESS, ui_server.run_failure_report(instance, run.run_id, ui)

    page.goto(f"{ui.url}/runs/{run.run_id}")
    page.get_by_text("Success", exact=True).first.wait_for()
    page.get_by_text("RUN_SUCCESS").first.wait_for()
    _shot(page, "run_success")

    after = _latest(instance, "filtered_annotations")
    assert after.run_id == run.run_id
    # Same raw annotations and seed: the same filtered files, hence the same data version.
    assert after.asset_materialization.tags["dagster/data_version"] == before.tags["dagster/data_version"]
    assert (after.asset_materialization.tags["dagster/input_data_version/raw_annotations"]
            == before.tags["dagster/input_data_version/raw_annotations"])


def test_evaluation_partition_shows_the_checkpoint_sha256(ui, page, instance, smoke_graph):
    assert smoke_graph.ok, "the smoke graph did not materialise completely (see the smoke_graph fixture log)"
    partition, seed, variant = _first_evaluation_partition(smoke_graph)
    model_record = _latest(instance, "ip2p_model", partition)  # the same seed|variant partition
    expected = model_record.asset_materialization.metadata["checkpoint_sha256"].value
    assert re.fullmatch(r"[0-9a-f]{64}", expected), expected
    evaluation = _latest(instance, "evaluation", partition)

    page.goto(ui.url + "/assets/evaluation")
    page.get_by_role("tab", name="Partitions").click()
    page.get_by_text(variant, exact=True).first.wait_for()  # the seed x variant grid
    page.goto(f"{ui.url}/assets/evaluation?view=partitions&partition={partition.replace('|', '%7C')}")
    page.get_by_text(partition, exact=True).first.wait_for()  # the partition's own heading
    shown = _metadata_text(page, "checkpoint_sha256")
    assert shown == expected, f"UI shows checkpoint_sha256 {shown!r}; ip2p_model/{partition} recorded {expected!r}"
    # the training run, shown as a link to its page
    assert _metadata_text(page, "ip2p_model_run_id") == model_record.run_id
    assert f"/seed_{seed}/runs/{model_record.run_id}/" in _metadata_text(page, "checkpoint")

    # Dagster's own lineage tag. For a partitioned upstream it is not the upstream's data version
    # itself but sha256 over the (sorted, concatenated) data versions of the upstream partitions
    # the partition mapping selects: here the one ip2p_model partition of this seed and variant.
    expected_tag = hashlib.sha256(expected.encode()).hexdigest()
    assert evaluation.asset_materialization.tags["dagster/input_data_version/ip2p_model"] == expected_tag
    page.get_by_text(re.compile(r"^Show tags")).click()
    tag_row = page.locator("tr").filter(has=page.get_by_text("input_data_version/ip2p_model", exact=True))
    assert tag_row.first.inner_text().split()[-1] == expected_tag
    page.locator("tr").filter(has=page.get_by_text("checkpoint_sha256", exact=True)).first.evaluate(
        "row => row.scrollIntoView({block: 'center', inline: 'nearest'})")
    _shot(page, "evaluation_partition")

    page.get_by_role("tab", name="Lineage").click()  # upstream and downstream of `evaluation`
    for asset in ("frame_cache", "ip2p_model", "t_tests", "summary_report"):
        page.get_by_text(asset, exact=True).first.wait_for()
    _shot(page, "evaluation_lineage")


def test_comparison_grid_image_renders(ui, page, instance, smoke_graph):
    from PIL import Image

    assert smoke_graph.ok, "the smoke graph did not materialise completely (see the smoke_graph fixture log)"
    partition, _, _ = _first_evaluation_partition(smoke_graph)
    markdown = _latest(instance, "evaluation", partition).asset_materialization.metadata["comparison_grid"].value
    found = re.search(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert found, f"comparison_grid of evaluation/{partition} embeds no PNG data URI: {markdown[:200]}"
    stored = Image.open(io.BytesIO(base64.b64decode(found.group(1))))

    page.goto(f"{ui.url}/assets/evaluation?view=partitions&partition={partition.replace('|', '%7C')}")
    _metadata_row(page, "comparison_grid").get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    image = dialog.locator("img").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    width, height, src = image.evaluate("img => [img.naturalWidth, img.naturalHeight, img.src]")
    assert src.startswith("data:image/png;base64,")
    assert (width, height) == stored.size
    box = image.bounding_box()
    assert box and box["width"] > 0 and box["height"] > 0  # laid out, not hidden
    assert "Input | GT | Output" in dialog.inner_text()
    _shot(page, "comparison_grid")
    dialog.get_by_role("button", name="Close").click()


def test_summary_report_renders_its_tables(ui, page, instance, smoke_graph):
    assert smoke_graph.ok, "the smoke graph did not materialise completely (see the smoke_graph fixture log)"
    models = smoke_graph.defs.get_assets_def("ip2p_model").partitions_def.get_partition_keys(
        dynamic_partitions_store=smoke_graph.instance)
    shas = {str(k): _latest(instance, "ip2p_model", k).asset_materialization.metadata["checkpoint_sha256"].value
            for k in models}

    page.goto(ui.url + "/assets/summary_report")
    listed = _metadata_text(page, "model_checkpoint_sha256")
    if "[Show JSON]" in listed:  # six variants: the UI folds the JSON behind a button
        _metadata_row(page, "model_checkpoint_sha256").get_by_text("[Show JSON]").click()
        dialog = page.get_by_role("dialog")
        dialog.wait_for()
        listed = dialog.inner_text()
        dialog.get_by_role("button", name="Close").click()
    for variant, sha in shas.items():
        assert sha in listed, f"summary_report does not list the checkpoint sha of {variant}"
    _metadata_row(page, "summary").get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    tables = dialog.locator("table")
    tables.first.wait_for()
    assert tables.count() == 3  # evaluations (per seed), across seeds, t-tests
    rows = tables.first.locator("tbody tr")
    assert rows.count() == 2 * len(models)  # every seed x variant on both eval sets
    assert ({rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())}
            == {k.keys_by_dimension["variant"] for k in models})
    _shot(page, "summary_report")
    dialog.get_by_role("button", name="Close").click()
