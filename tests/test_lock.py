"""The install lock (`constraints.txt`, written by `.ci/lock.py`): one pin per package, torch pinned
without its build label so the CPU and the CUDA builds both satisfy it, and the places that install
use it. (`make lock-check`, which CI runs after `make test`, compares the environment with it.)"""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pecn_lock", REPO / ".ci" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def test_freeze_drops_build_labels_pip_and_the_project(monkeypatch):
    monkeypatch.setattr(lock, "installed", lambda: {"torch": ("torch", "2.13.0+cpu"), "numpy": ("numpy", "2.4.6"),
                                                    "setuptools": ("setuptools", "84.2.1")})
    text = lock.freeze()
    pins = [line for line in text.splitlines() if not line.startswith("#")]
    assert pins == ["numpy==2.4.6", "setuptools==84.2.1", "torch==2.13.0"]
    assert "torch 2.13.0+cpu" in text  # the header names the build it was made with


def test_check_reports_other_versions_and_unlocked_packages(monkeypatch, tmp_path):
    path = tmp_path / "constraints.txt"
    path.write_text("# header\ntorch==2.13.0\nnumpy==2.4.6\npy-spy==0.4.0\n", encoding="utf-8")
    monkeypatch.setattr(lock, "installed", lambda: {"torch": ("torch", "2.13.0+cu128"), "numpy": ("numpy", "2.3.0"),
                                                    "extra-pkg": ("extra_pkg", "1.0")})
    problems = lock.check(path)
    assert problems == ["extra_pkg==1.0 is installed but not in constraints.txt",
                        "numpy==2.3.0 is installed, constraints.txt says 2.4.6"]   # +cu128 matches; py-spy absent is fine


def test_the_committed_lock_and_its_users():
    pins = lock.read_lock()
    assert pins["torch"] == "2.13.0" and "+" not in "".join(pins.values())
    assert "setuptools" in pins and "pip" not in pins and "pecn" not in pins
    assert {"dagster", "diffusers", "transformers", "accelerate", "pytest"} <= set(pins)
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "CONSTRAINTS ?= constraints.txt" in makefile and '$(PY) -m pip install $(PIP_LOCK) -e ".[test]"' in makefile
    assert "make lock-check" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "-c constraints.txt" in (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
