"""The package layout keeps its layers (docs/architecture.md): read from every import in src/,
at the top of a file or inside a function."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import segbench

ROOT = Path(segbench.__file__).parent
ENTRY = {"cli", "api", "__main__", "__init__"}
# Names `from segbench import X` may take that are not modules.
PACKAGE_NAMES = {"SegbenchError", "config_dir", "__version__"}
# What each layer must never import (besides the entry points and commands, which nothing imports).
NEVER = {
    "runs": {"engine", "models", "inference", "data", "runtime", "tracking", "report"},
    "data": {"engine", "inference", "runs", "runtime", "tracking", "report", "models"},
    "models": {"engine", "inference", "runs", "runtime", "tracking", "report", "data"},
    "metrics": {"engine", "inference", "runs", "runtime", "data", "models", "report"},
    "runtime": {"engine", "inference", "report"},
    "inference": {"engine", "report", "tracking"},
    "tracking": {"engine", "inference", "report"},
}


def unit(module: str) -> str:
    """segbench.a.b -> a: the package (or top-level module) an import lands in."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        me = unit(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("segbench"):
                names = [a.name for a in node.names] if node.module == "segbench" else [""]
                targets = [f"segbench.{n}" if n else node.module for n in names
                           if n not in PACKAGE_NAMES]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("segbench.")]
            else:
                continue
            graph[me] |= {unit(t) for t in targets} - {me}
    return graph


def test_nothing_below_the_entry_points_imports_them_or_the_commands():
    graph = import_graph()
    upward = {(m, t) for m, ts in graph.items() if m not in ENTRY | {"commands"}
              for t in ts if t in ENTRY | {"commands"}}
    assert not upward


def test_each_layer_keeps_off_the_layers_above_it():
    graph = import_graph()
    faults = {(m, t) for m, banned in NEVER.items() for t in graph.get(m, set()) & banned}
    assert not faults


def test_the_packages_import_each_other_without_a_cycle():
    graph = import_graph()
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join((*path, node))}"
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, (*path, node))
        state[node] = "done"
        order.append(node)

    for node in sorted(graph):
        visit(node, ())
    assert order.index("runs") < order.index("engine")
    assert order.index("inference") < order.index("engine")


def test_the_layer_rules_would_catch_an_upward_import(tmp_path, monkeypatch):
    # The check itself: a run-directory module importing the engine is seen.
    fake = tmp_path / "segbench"
    (fake / "runs").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "runs" / "x.py").write_text("def f():\n    from segbench.engine import trainer\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert "engine" in import_graph()["runs"]
