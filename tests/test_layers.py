"""The package's import structure: no cycles, and no import against the layer order
errors/io/malloc/schema → data → backbones → efficiency/metrics → methods → config → runner →
report/analysis/learner/planner/export → service → cli (a module may import its own layer
and those before it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgecl"
LAYERS = {
    "errors": 0, "io": 0, "malloc": 0, "schema": 0, "data": 1, "backbones": 2, "efficiency": 3,
    "metrics": 3, "methods": 4, "config": 5, "runner": 6, "analysis": 7, "report": 7,
    "learner": 7, "planner": 7, "export": 7, "sweep": 7, "service": 8, "cli": 9,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path) -> set[str]:
    """edgecl modules ``path`` imports (``from edgecl.a import b`` counts ``edgecl.a.b`` when
    that is a module, else ``edgecl.a``)."""
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` imports never run
        id(n) for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(block)}
    nodes = [n for n in ast.walk(tree) if id(n) not in typing_only]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgecl"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("edgecl")}
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 0  # `edgecl` itself: its __version__


def test_every_top_level_part_has_a_layer() -> None:
    assert {m.split(".")[1] for m in MODULES if "." in m} <= set(LAYERS)


def test_no_import_against_the_layer_order() -> None:
    wrong = [
        f"{m} imports {dep}"
        for m, path in MODULES.items()
        if m != "edgecl"  # the facade: ``edgecl.Learner`` is imported lazily, on use
        for dep in imported(path)
        if layer(dep) > layer(m)
    ]
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    graph = {m: imported(p) - {m} for m, p in MODULES.items()}
    # a package's __init__ re-exports its submodules: that edge is not a dependency cycle
    graph = {m: {d for d in deps if not m.startswith(f"{d}.")} for m, deps in graph.items()}
    done: set[str] = set()

    def visit(m: str, stack: list[str]) -> None:
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(m):], m]))
        if m in done:
            return
        for dep in sorted(graph.get(m, ())):
            visit(dep, [*stack, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
