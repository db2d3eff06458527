"""Imports run down the layers and never in a circle (function-level imports included)."""

import ast
from pathlib import Path

import pecn_assets
import pecn_ml

ROOTS = {"pecn_ml": Path(pecn_ml.__file__).parent, "pecn_assets": Path(pecn_assets.__file__).parent}

# Lowest first; a module may import its own layer and the layers below. The longest prefix decides.
LAYERS = [
    ("pecn_ml.utils",),
    ("pecn_ml.deployment", "pecn_ml.data", "pecn_ml.prompts", "pecn_ml.variants", "pecn_ml.images",
     "pecn_ml.metrics", "pecn_ml.model_cards"),
    ("pecn_ml.models",),
    ("pecn_ml.training",),
    ("pecn_ml.sampling", "pecn_ml.stats", "pecn_ml.report", "pecn_ml.progress_estimation", "pecn_ml.artifacts"),
    ("pecn_ml.models.standins", "pecn_ml.profiles", "pecn_ml.rehearsal", "pecn_ml.gpu_check"),
    ("pecn_assets",),
    ("pecn_assets.build", "pecn_assets.definitions"),
    ("pecn_assets.tools",),
]


def layer(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, module
    return rank


def modules() -> dict[str, Path]:
    found = {}
    for pkg, root in ROOTS.items():
        for f in root.rglob("*.py"):
            name = ".".join((pkg, *f.relative_to(root).with_suffix("").parts))
            found[name.removesuffix(".__init__")] = f
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(f, set(mods)) - {m} for m, f in mods.items()}


def test_imports_run_down_the_layers():
    upward = [f"{m} -> {d}" for m, deps in graph().items() for d in deps
              if not d.startswith(m + ".") and layer(d) > layer(m)]
    assert upward == []


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    # a package's __init__ importing nothing makes "pkg -> pkg.mod" harmless; drop those edges
    g = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph().items()}
    assert cycles(g) == []


def test_the_checks_see_a_circle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert layer("pecn_ml.utils.usage") < layer("pecn_ml.training.pix2pix")
    assert layer("pecn_ml.models.standins") > layer("pecn_ml.training.pix2pix") > layer("pecn_ml.models.pix2pix")
