"""Falsifiers of contracts/claims/architecture.yaml: the modules of harness/ form the layers docs/architecture.md shows, no module imports one that
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


def documented_layers() -> list[set[str]]:
    """docs/architecture.md's layer table, lowest first: the modules of each row."""
    import re

    text = (HARNESS.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("| layer | modules |", 1)[1].split("\n\n", 1)[0]
    return [{f"harness.{name}" for name in re.findall(r"`(\w+)`", row)} for row in table.splitlines()[2:]]


def test_every_module_imports_only_its_layer_and_the_layers_below():
    """docs/architecture.md's layers are the code's: every harness module is in exactly one layer, and none imports a
    module of a higher layer."""
    graph, layers = import_graph(), documented_layers()
    placed = [m for layer in layers for m in layer]
    assert sorted(placed) == sorted(graph), "modules missing from (or doubled in) the layer table"
    level = {module: i for i, layer in enumerate(layers) for module in layer}
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if level[d] > level[m])
    assert not upward, f"upward imports: {upward}"
