"""pecn_ml stays free of Dagster: the ML library must be usable from a notebook."""

import ast
from pathlib import Path

import pecn_ml

PKG = Path(pecn_ml.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pecn_ml_never_imports_dagster():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 5
    offenders = [str(f.relative_to(PKG)) for f in files
                 if {"dagster", "dagster_k8s", "dagster_postgres", "pecn_assets"} & _imports(f)]
    assert offenders == []


def test_boundary_check_sees_a_dagster_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from dagster import asset\n")
    assert "dagster" in _imports(bad)
