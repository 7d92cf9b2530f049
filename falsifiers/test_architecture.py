"""Falsifiers of contracts/claims/architecture.yaml: the modules of harness/ form layers, no module imports one that
imports it back (directly or through others), lazy imports inside functions included."""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"


def harness_imports(path: Path) -> set[str]:
    """The harness modules a module imports anywhere in its source (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "harness":
                found |= {f"harness.{alias.name}" for alias in node.names}
            elif node.module.startswith("harness."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("harness.")}
    return found


def import_graph(root: Path = HARNESS) -> dict[str, set[str]]:
    modules = {f"harness.{p.stem}": p for p in root.glob("*.py") if p.stem != "__init__"}
    return {name: harness_imports(path) & set(modules) - {name} for name, path in modules.items()}


def test_no_module_of_harness_imports_one_that_imports_it_back():
    """The import graph of harness/ (every `import` / `from harness... import`, lazy ones included) has no cycle:
    the batched decoder (harness.decode) and the task folders (harness.tasks) sit below both evaluate and agent."""
    graph = import_graph()
    assert "harness.decode" in graph["harness.evaluate"] and "harness.tasks" in graph["harness.evaluate"]
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle in harness/: {' -> '.join(err.args[1])}") from None
    assert set(order) == set(graph)
