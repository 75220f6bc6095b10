"""The shape of the package, read from its source: imports point downward only.

The layers, bottom to top: contracts and state types -> checks -> cells (`_cells/`, dropout)
-> layers -> compose -> the engine (`_scan/`) -> recur -> tbptt -> interop. These tests parse
every module with `ast`, so they see imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "recurjax"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The recurjax modules an `ImportFrom` names (`from . import x` names `pkg.x`)."""
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = module.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if not base.startswith("recurjax"):
        return []
    if node.module is None:  # `from . import a, b`: submodules
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def _imports_of(path: Path) -> list[tuple[str, bool]]:
    """A module's recurjax imports, each with whether it sits inside a function."""
    module = _module_name(path)
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.ImportFrom):
            targets = _resolve(module, path.name == "__init__.py", node)
            found.extend((t, in_function) for t in targets)
        elif isinstance(node, ast.Import):
            found.extend((a.name, in_function) for a in node.names)
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return [(t, f) for t, f in found if t.startswith("recurjax")]


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """Every module's recurjax imports."""
    return {_module_name(p): _imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


GRAPH = _imports()


def _known(target: str) -> str:
    """The module a target names (`recurjax._scan.api` for a name imported from it)."""
    while target not in GRAPH and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def test_the_package_has_no_import_cycle():
    edges = {m: sorted({_known(t) for t, _ in deps} - {m}) for m, deps in GRAPH.items()}
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        for target in edges.get(module, []):
            walk(target, [*path, module])
        done.add(module)

    for module in edges:
        walk(module, [])


def test_no_recurjax_import_inside_a_function():
    inside = {m: [t for t, f in deps if f] for m, deps in GRAPH.items()}
    assert {m: t for m, t in inside.items() if t} == {}


@pytest.mark.parametrize("module", ["recurjax._contracts", "recurjax._states"])
def test_the_bottom_layer_imports_nothing_from_recurjax(module):
    assert GRAPH[module] == []


def _reaches(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target, _ in GRAPH[todo.pop()]:
            target = _known(target)
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.mark.parametrize(
    "lower, upper",
    [
        ("recurjax._states", "recurjax._checks"),
        ("recurjax._checks", "recurjax._cells"),
        ("recurjax._cells", "recurjax._layers"),
        ("recurjax._layers", "recurjax._compose"),
        ("recurjax._compose", "recurjax._scan"),
        ("recurjax._scan", "recurjax._recur"),
        ("recurjax._recur", "recurjax._trees"),
        ("recurjax._trees", "recurjax._tbptt"),
    ],
)
def test_lower_layers_never_import_upper_ones(lower, upper):
    below = {lower} | _reaches(lower)
    assert not any(m == upper or m.startswith(upper + ".") for m in below), sorted(below)


def test_the_engine_names_no_cell_class():
    """The engine reaches cells through the protocols of `_contracts` and builds states from
    `_states`; it imports nothing from a module that defines cells."""
    cell_modules = {"recurjax._compose", "recurjax._layers", "recurjax._dropout"}
    cell_modules |= {m for m in GRAPH if m.startswith("recurjax._cells")}
    assert "recurjax._cells.classic" in cell_modules
    named = {}
    for path in sorted((PACKAGE / "_scan").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                module = _module_name(path)
                for target in _resolve(module, path.name == "__init__.py", node):
                    if _known(target) in cell_modules:
                        named[path.name] = sorted(a.name for a in node.names)
    assert named == {}
