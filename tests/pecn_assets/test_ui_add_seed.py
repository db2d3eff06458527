"""A training seed added in the Dagster web UI, as a person adds it, in Debian's Chromium (Playwright).

A real webserver (tests/pecn_test_support/ui_server.py) serves the demo deployment on an empty
instance that holds training seed 0 (what the `register_seeds` sensor adds). Headless Chromium then
opens `ip2p_model` → Partitions, clicks "Materialize…", confirms the "upstream not materialised"
warning, clicks "Add a partition" under the `seed` dimension, types 1 and saves, and launches
nothing. The seed must then be in the instance and its row on the Partitions tab (12 partitions
instead of 6), with no restart.
Screenshots go to test-artifacts/ui/ (docs/ui_add_seed.png and docs/ui_seed_added.png are copies).
No graph is materialised: this needs a minute, not the smoke graph.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/pecn_assets/test_ui_add_seed.py -m "slow or not slow"
Needs /usr/bin/chromium; skipped with that reason without it, or failed under CI=true.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from pecn_assets.partitions import SEED_PARTITIONS, add_seeds
from pecn_test_support import ui_server
from pecn_test_support.services import require_service

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
SHOTS = ui_server.ARTIFACTS / "ui"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_service("Chromium", None if Path(CHROMIUM).exists() else
                    f"{CHROMIUM} is not installed (Debian package chromium): run `sudo bash .ci/services.sh`")
    home = tmp_path_factory.mktemp("add_seed") / "dagster_home"
    home.mkdir()
    shutil.copy(ui_server.REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        add_seeds(instance, (0,))
    server = ui_server.start_webserver(home, {"PECN_PROFILE": "demo", "PECN_SEEDS": "0"},
                                       ui_server.ARTIFACTS / "ui" / "add_seed_webserver.log")
    ui_server.graphql(server.url, "mutation { setNuxSeen }")  # no "Join the community" dialog
    yield server
    server.stop()


def test_a_seed_added_in_the_ui_is_a_partition_at_once(server, tmp_path):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                                                       headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(60_000)
        try:
            page.goto(server.url + "/assets/ip2p_model?view=partitions")
            page.get_by_text("6 Partitions Selected").wait_for()  # seed 0 x six variants
            page.get_by_role("button", name="Materialize…").first.click()
            page.get_by_role("dialog").get_by_role("button", name="Confirm").click()  # upstream never materialised
            page.get_by_text("Add a partition", exact=True).click()
            add = page.get_by_role("dialog").filter(has_text="Add a partition for")
            assert SEED_PARTITIONS in add.inner_text()
            add.get_by_role("textbox").fill("1")
            page.screenshot(path=str(SHOTS / "add_seed.png"))
            add.get_by_role("button", name="Save", exact=True).click()
            add.wait_for(state="detached")
            page.get_by_role("dialog").get_by_role("button", name="Cancel").click()  # launch nothing

            page.goto(server.url + "/assets/ip2p_model?view=partitions")
            page.get_by_text("12 Partitions Selected").wait_for()  # seeds 0 and 1 x six variants, no restart
            page.screenshot(path=str(SHOTS / "seed_added.png"))
        finally:
            context.close()

    with dg.DagsterInstance.from_config(str(server.dagster_home)) as instance:
        assert instance.get_dynamic_partitions(SEED_PARTITIONS) == ["0", "1"]
        assert instance.get_runs() == []  # a seed is added without a run (the weekly backfill trains it)
