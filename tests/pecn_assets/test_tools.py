"""The command-line tools (`python -m pecn_assets.tools.NAME`): the Makefile's modules exist, each
tool answers --help, and cleanup, ui and results load no asset module and not the Definitions."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_module_the_makefile_runs_exists():
    modules = set(re.findall(r"-m (pecn_\w+(?:\.\w+)*)", (REPO / "Makefile").read_text()))
    assert {"pecn_assets.tools.demo", "pecn_assets.tools.rehearse", "pecn_assets.tools.ui"} <= modules
    assert [m for m in modules if importlib.util.find_spec(m) is None] == []


@pytest.mark.parametrize("tool", ["demo", "rehearse", "cleanup", "results"])
def test_a_tool_answers_help(tool):
    done = subprocess.run([sys.executable, "-m", f"pecn_assets.tools.{tool}", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


@pytest.mark.parametrize("tool", ["cleanup", "ui", "results"])
def test_cleanup_ui_and_results_import_no_asset_module(tool):
    code = f"import json, sys\nimport pecn_assets.tools.{tool}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert f"pecn_assets.tools.{tool}" in loaded
    assert [m for m in loaded if m.startswith("pecn_assets.assets") or m == "pecn_assets.definitions"] == []


def test_cleanup_finds_the_outputs_folder_from_the_deployment(tmp_path):
    from pecn_assets.tools.cleanup import outputs_folder
    from pecn_ml.deployment import Deployment
    from pecn_ml.profiles import get_profile

    assert outputs_folder(Deployment(profile="smoke", outputs_dir=str(tmp_path))) == tmp_path
    assert outputs_folder(Deployment()) == Path(get_profile("demo").outputs_dir).absolute()
