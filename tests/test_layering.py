"""Imports point one way: cli -> pipeline -> methods / stats -> evaluate / inputs -> config -> data /
models / tracking -> scores / windows / paths. No library module imports lhcad.cli; no import cycles.

Every module under src/lhcad is parsed with ``ast`` and every ``import`` / ``from ... import`` in it
counts: top-level, inside functions and under ``if TYPE_CHECKING:`` alike. (Not seen: imports
by string, e.g. ``importlib.import_module`` or Hydra's ``_target_``; and an import of
``lhcad.a.b`` is an edge to ``lhcad.a.b`` only, not also to the package ``lhcad.a`` it initialises.)

The layer table (``LAYERS``): a module belongs to the layer of its longest matching prefix. A
module may import its own layer (e.g. methods.tnt -> methods.per_jet) or a layer of lower rank.
Two different layers of the same rank are siblings and may not import each other (stats and
methods stay independent, so do evaluate and inputs, and data, models and tracking).

``lhcad.config`` has a rank of its own between data and the layers that use it: it imports
``lhcad.data.dataset`` (``check_signal_frac``) and ``lhcad.paths``, and every layer above data may
use it (the pipeline, the method registry, the command-line apps). ``lhcad.paths`` (the config
tree's location) sits at the bottom with the shared value types, so that data generation can find
``conf/generate.yaml`` without importing config or cli.

A new top-level module or package must be added to ``LAYERS``; the test says so.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "lhcad"

LAYERS: dict[str, int] = {
    # shared value types and locations: import nothing from lhcad
    "lhcad": 0,  # the package's __init__ (version only)
    "lhcad.scores": 0,
    "lhcad.windows": 0,
    "lhcad.paths": 0,
    # events, networks, the MLflow store
    "lhcad.data": 1,
    "lhcad.models": 1,
    "lhcad.tracking": 1,
    "lhcad.kfold": 1,  # fold assignment and score merging (imports only lhcad.scores)
    # config helpers: above data (imports lhcad.data.dataset), usable by everything above it
    "lhcad.config": 2,
    # what a network sees; per-run metrics, selections, plots
    "lhcad.inputs": 3,
    "lhcad.evaluate": 3,
    # the methods; bump hunts, ABCD, significances
    "lhcad.methods": 4,
    "lhcad.stats": 4,
    # one run, start to finish
    "lhcad.pipeline": 5,
    "lhcad.report": 5,
    # entry points: nothing imports them
    "lhcad.cli": 6,
}
CLI = "lhcad.cli"

Edges = list[tuple[str, int]]
"""(imported lhcad module, line) pairs of one module."""


# ---------------------------------------------------------------------------------------------- checker


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/lhcad/methods/base.py`` -> ``lhcad.methods.base``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool, known: Iterable[str] = ()) -> Edges:
    """``(imported lhcad module, line)`` for every import statement anywhere in ``source``.

    ``from X import Y`` counts as an import of ``X.Y`` when that is a module (in ``known``), else of
    ``X``; relative imports are resolved against ``module``.
    """
    known = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    found = list(dict.fromkeys(found))  # ``from X import a, b`` of one module X counts once
    return [(name, line) for name, line in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def layer_of(module: str, layers: Mapping[str, int] = LAYERS) -> str | None:
    """The longest prefix of ``module`` (at a dot) that is in ``layers``; the package itself
    (``lhcad``) is a layer of its own ``__init__`` only, not a catch-all."""
    if module == PACKAGE:
        return PACKAGE if PACKAGE in layers else None
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        prefix = ".".join(parts[:n])
        if prefix in layers:
            return prefix
    return None


def import_graph(src: Path = SRC) -> dict[str, Edges]:
    """Module -> the lhcad modules it imports (with line numbers), for every module under ``src/lhcad``."""
    files = sorted((src / PACKAGE).rglob("*.py"))
    names = {module_name(f, src): f for f in files}
    return {
        name: imports_of(f.read_text(encoding="utf-8"), name, f.name == "__init__.py", names)
        for name, f in names.items()
    }


Graph = Mapping[str, Edges]


def layering_violations(graph: Graph, layers: Mapping[str, int] = LAYERS) -> list[str]:
    """Imports of lhcad.cli from outside it, upward imports and imports between sibling layers."""
    problems = []
    for module, targets in graph.items():
        source_layer = layer_of(module, layers)
        if source_layer is None:
            problems.append(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py")
            continue
        for target, line in targets:
            target_layer = layer_of(target, layers)
            where = f"{module}:{line} imports {target}"
            if target_layer is None:
                problems.append(f"{where}, which is in no layer: add it to LAYERS in tests/test_layering.py")
            elif target_layer == CLI and source_layer != CLI:
                problems.append(f"{where}: only the command-line apps may import lhcad.cli")
            elif target_layer == source_layer:
                continue
            elif layers[target_layer] > layers[source_layer]:
                problems.append(
                    f"{where}: upward ({source_layer}, rank {layers[source_layer]} -> "
                    f"{target_layer}, rank {layers[target_layer]})"
                )
            elif layers[target_layer] == layers[source_layer]:
                rank = layers[source_layer]
                problems.append(f"{where}: {source_layer} and {target_layer} are sibling layers ({rank})")
    return problems


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` among the modules of ``graph``, or None (iterative DFS)."""
    edges = {m: sorted({t for t, _ in targets if t in graph and t != m}) for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(edges):
        if state.get(root):
            continue
        path, stack = [root], [iter(edges[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges[nxt]))
    return None


def self_imports(graph: Graph) -> list[str]:
    return [f"{m}:{line} imports itself" for m, targets in graph.items() for t, line in targets if t == m]


# ---------------------------------------------------------------------------------------------- the tree


@pytest.fixture(scope="module")
def graph() -> dict[str, Edges]:
    g = import_graph()
    assert len(g) > 20 and "lhcad.pipeline" in g and "lhcad.methods.base" in g, "src/lhcad not found"
    return g


def test_no_library_module_imports_cli(graph):
    bad = [
        f"{m}:{line} imports {t}"
        for m, targets in graph.items()
        if layer_of(m) != CLI
        for t, line in targets
        if layer_of(t) == CLI
    ]
    assert not bad, "only the command-line apps may import lhcad.cli:\n" + "\n".join(bad)


def test_imports_point_down_the_layers(graph):
    problems = layering_violations(graph)
    assert not problems, "\n".join(problems)


def test_no_import_cycles(graph):
    assert not self_imports(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_shared_value_types_import_nothing_from_lhcad(graph):
    for module in ("lhcad.scores", "lhcad.windows", "lhcad.paths"):
        assert graph[module] == [], f"{module} imports {graph[module]}"


# ---------------------------------------------------------------------------------------------- the checker


KNOWN = [
    "lhcad.methods", "lhcad.methods.base", "lhcad.methods.sideband", "lhcad.evaluate", "lhcad.evaluate.plots"
]


def test_parser_sees_function_level_relative_and_type_checking_imports():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy as np\n"
        "import lhcad.evaluate.plots as p\n"
        "if TYPE_CHECKING:\n"
        "    from lhcad.scores import Scores\n"
        "def f():\n"
        "    from ..methods import base, sideband\n"
        "    from . import plots\n"
        "    from lhcad.evaluate import auc\n"
    )
    found = imports_of(source, "lhcad.evaluate.run_evaluation", False, KNOWN)
    assert found == [
        ("lhcad.evaluate.plots", 3),
        ("lhcad.scores", 5),
        ("lhcad.methods.base", 7),
        ("lhcad.methods.sideband", 7),
        ("lhcad.evaluate.plots", 8),
        ("lhcad.evaluate", 9),
    ]
    # in a package's __init__, "." is the package itself
    found = imports_of("from .plots import x\n", "lhcad.evaluate", True, KNOWN)
    assert found == [("lhcad.evaluate.plots", 1)]


def test_checker_flags_upward_sibling_and_cli_imports():
    graph = {
        "lhcad.evaluate.plots": [
            ("lhcad.methods.base", 3), ("lhcad.scores", 4), ("lhcad.evaluate.metrics", 5)
        ],
        "lhcad.stats.search": [("lhcad.methods.tnt", 7), ("lhcad.evaluate.run_evaluation", 8)],
        "lhcad.methods.registry": [("lhcad.cli._paths", 11), ("lhcad.config", 12)],
        "lhcad.inputs": [("lhcad.evaluate", 2)],
        "lhcad.cli.train": [("lhcad.pipeline", 1), ("lhcad.cli._paths", 2)],
        "lhcad.newthing": [],
    }
    problems = layering_violations(graph)
    assert any("lhcad.evaluate.plots:3" in p and "upward" in p for p in problems)
    assert any("lhcad.stats.search:7" in p and "sibling" in p for p in problems)
    assert any("lhcad.methods.registry:11" in p and "lhcad.cli" in p for p in problems)
    assert any("lhcad.inputs:2" in p and "sibling" in p for p in problems)
    assert any("lhcad.newthing is in no layer" in p for p in problems)
    assert len(problems) == 5, problems  # downward, same-layer and cli-internal imports are fine


def test_checker_finds_cycles():
    cyclic = {
        "lhcad.a": [("lhcad.b", 1)],
        "lhcad.b": [("lhcad.c", 1), ("lhcad.d", 2)],
        "lhcad.c": [("lhcad.a", 1)],
        "lhcad.d": [],
    }
    cycle = find_cycle(cyclic)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"lhcad.a", "lhcad.b", "lhcad.c"}
    # the hidden function-level cycle reweighting <-> sideband this test was written against
    hidden = {"m.r": [("m.s", 89)], "m.s": [("m.r", 344)]}
    assert find_cycle(hidden) in (["m.r", "m.s", "m.r"], ["m.s", "m.r", "m.s"])
    acyclic = {
        "lhcad.a": [("lhcad.b", 1)], "lhcad.b": [("lhcad.d", 1)], "lhcad.d": [], "lhcad.e": [("lhcad.b", 1)]
    }
    assert find_cycle(acyclic) is None
    assert self_imports({"lhcad.a": [("lhcad.a", 3)]}) == ["lhcad.a:3 imports itself"]
