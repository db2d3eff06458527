"""Settings are read once: `pecn_ml.deployment.Deployment.from_env` is the only reader of the
environment variables the platform defines (PECN_*, and MLFLOW_TRACKING_URI / DAGSTER_HOME for it)."""

import ast
import re
from pathlib import Path

import pytest

import pecn_assets
import pecn_ml
from pecn_ml.deployment import Deployment

ROOTS = (Path(pecn_ml.__file__).parent, Path(pecn_assets.__file__).parent)
READER = Path(pecn_ml.__file__).parent / "deployment.py"
PLATFORM = re.compile(r"^(PECN_[A-Z0-9_]+|MLFLOW_TRACKING_URI|DAGSTER_HOME)$")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def env_reads(path: Path) -> list[str]:
    """`file:line name` of every string constant in `path` that is a platform variable's name, and of
    every read of the environment (os.environ.get / [..] / os.getenv) by a constant platform name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs, found = _docstrings(tree), []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                and PLATFORM.match(node.value)):
            found.append(f"{path.name}:{node.lineno} {node.value}")
    return found


def test_only_the_deployment_names_platform_variables():
    files = [f for root in ROOTS for f in sorted(root.rglob("*.py"))]
    assert len(files) > 40
    offenders = [hit for f in files if f != READER for hit in env_reads(f)]
    assert offenders == []
    assert len(env_reads(READER)) >= 20          # the reader itself is seen


def test_no_module_reads_os_environ_at_large():
    """`os.environ` appears only where a child process's environment is built or a claim sets
    CUDA_VISIBLE_DEVICES (writes), and in the entry points that hand it to `Deployment.from_env`."""
    allowed = {"environ.get(\"RANK\"", "environ.get(\"WORLD_SIZE\"", "environ.get(\"LOCAL_RANK\""}
    hits = []
    for root in ROOTS:
        for f in sorted(root.rglob("*.py")):
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"os\.getenv|environ\.get\(|environ\[\"PECN", line) and not any(a in line for a in allowed):
                    if "CUDA_VISIBLE_DEVICES" not in line and "CUDA_ENV" not in line:
                        hits.append(f"{f.name}:{i}: {line.strip()}")
    assert hits == []


def test_the_check_sees_a_platform_variable(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Reads PECN_PROFILE."""\nimport os\nNAME = os.environ.get("PECN_PROFILE")\n')
    assert env_reads(bad) == ["bad.py:3 PECN_PROFILE"]


def test_from_env_reads_every_variable_and_names_bad_values():
    env = {"PECN_PROFILE": "smoke", "PECN_SEEDS": "0, 2", "PECN_TRAIN_PROCESSES": "2", "PECN_ALLOW_CPU": "yes",
           "PECN_GPU_DEVICES": "0,1", "PECN_AUTOMATION": "off", "PECN_EXECUTOR": "in_process",
           "PECN_K8S_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
           "DAGSTER_HOME": "/tmp/home"}
    d = Deployment.from_env(env)
    assert (d.profile, d.seeds, d.train_processes, d.allow_cpu, d.gpu_devices) == ("smoke", (0, 2), 2, True, "0,1")
    assert (d.automation, d.executor, d.k8s_gpu_tolerations[0]["key"]) == (False, "in_process", "nvidia.com/gpu")
    assert d.lock_dir(Path("/out")) == Path("/tmp/home/gpu_locks")
    assert Deployment.from_env({}) == Deployment()
    for name, value in [("PECN_TRAIN_PROCESSES", "0"), ("PECN_SEEDS", "a"), ("PECN_EXECUTOR", "slurm"),
                        ("PECN_GPU_DEVICES", "GPU-1"), ("PECN_K8S_GPU_NODE_SELECTOR", "[1]"),
                        ("PECN_GPU_POOL_LIMIT", "-1"), ("PECN_TRACKING", "wandb")]:
        with pytest.raises(ValueError, match=name):
            Deployment.from_env({name: value})
