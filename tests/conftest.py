"""Shared fixtures: the smoke graph (tiny synthetic SSv2 + tiny models, whole asset graph
materialised once into a temporary DAGSTER_HOME, two training seeds), shared by the Dagster-level
tests.

Tests that use `smoke_graph` carry `pytest.mark.xdist_group("smoke_graph")` so that under
`pytest -n 2 --dist loadgroup` they run in one worker and the graph is built once.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/pecn_test_support


@dataclass(frozen=True)
class SmokeGraph:
    root: Path
    dagster_home: Path
    data_dir: Path
    env: dict
    resources: dict   # the `settings` (pointing at `root`), `models` and `tracking` resources
    instance: object  # dagster.DagsterInstance
    ok: bool
    defs: object      # dagster.Definitions of the smoke deployment (built from `env`)


SMOKE_SEEDS = (0, 1)  # the demo runs one training seed; the smoke graph two


def smoke_env(root: Path) -> dict:
    """Environment variables that point every PECN setting at `root` (smoke profile)."""
    return {
        "PECN_PROFILE": "smoke",
        "PECN_DATA_DIR": str(root / "data"),
        "PECN_OUTPUTS_DIR": str(root / "outputs"),
        "PECN_RESULTS_DIR": str(root / "test_result"),
        "PECN_SEEDS": ",".join(str(s) for s in SMOKE_SEEDS),
        "DAGSTER_HOME": str(root / "dagster_home"),
    }


def write_dagster_yaml(home: Path) -> None:
    """The repository's instance config (pools etc.) copied into a temporary DAGSTER_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    repo_yaml = Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml"
    (home / "dagster.yaml").write_text(repo_yaml.read_text())


@pytest.fixture(scope="session")
def smoke_graph(tmp_path_factory) -> SmokeGraph:
    """The whole asset graph materialised on the smoke profile (tiny data, tiny models)."""
    import dagster as dg

    from pecn_assets.build import build_definitions
    from pecn_assets.tools.demo import ensure_synthetic_data, materialize_all
    from pecn_ml.deployment import Deployment
    from pecn_ml.profiles import get_profile

    root = tmp_path_factory.mktemp("smoke")
    env = smoke_env(root)
    write_dagster_yaml(Path(env["DAGSTER_HOME"]))
    deployment = Deployment.from_env(env)  # the same choice the UI tests' webserver makes from `env`
    ensure_synthetic_data(Path(env["PECN_DATA_DIR"]), get_profile(deployment.profile).synthetic)
    defs = build_definitions(deployment)
    resources = {k: defs.resources[k] for k in ("settings", "models", "tracking")}
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    ok = materialize_all(instance, defs, log=print)
    return SmokeGraph(root=root, dagster_home=Path(env["DAGSTER_HOME"]), data_dir=Path(env["PECN_DATA_DIR"]),
                      env=env, resources=resources, instance=instance, ok=ok, defs=defs)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps process-wide state (device, mixed precision): an Accelerator of one test
    would fix what the next test's may choose. The trainers build one Accelerator per process (a
    `torchrun` run each), so the library no longer resets that state; tests that build several in
    one pytest process get it reset after each test here (accelerate's private `_reset_state`)."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
