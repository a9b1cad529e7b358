"""How the product packages import: never the dev-only code, and never in a circle.

Every `import` in a module counts, also one deferred into a function body: deferring
it hides a circle from the interpreter, not from a reader. Left out: `if
TYPE_CHECKING:` blocks (they never run), and the `__init__` that `import p.m` runs
first (a package's `__init__` gathering its own submodules is no circle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import REPO

pytestmark = pytest.mark.unit

#: The packages that ship (the wheel, the images), by where they are in the checkout.
PRODUCT = {
    "prefect_raypool": REPO / "runner" / "prefect_raypool",
    "prefect_raypool_operator": REPO / "operator" / "prefect_raypool_operator",
    "prefect_raypool_kuberay": REPO / "kuberay" / "prefect_raypool_kuberay",
}
#: The checkout's own packages, never in the wheel or an image.
DEV_ONLY = {"testbed", "tests", "bench"}


def product_modules() -> dict[str, Path]:
    modules = {}
    for package, root in PRODUCT.items():
        for path in sorted(root.rglob("*.py")):
            parts = (package, *path.relative_to(root).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(module: str, path: Path) -> Iterator[str]:
    """The dotted names `module` imports (`from a import b` gives `a.b`), anywhere
    in it but under `if TYPE_CHECKING:`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    todo: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield from (f"{base}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports. A name is the longest module it
    starts with: `from p import f` imports p, `from p import module` that module."""
    modules = product_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in imported_names(module, path)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules in order with the first repeated; None if none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for child in sorted(graph.get(module, ())):
            if cycle := visit(child):
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module):
            return cycle
    return None


def test_the_product_packages_import_nothing_dev_only() -> None:
    found = sorted(
        f"{path.relative_to(REPO)}: {name}"
        for module, path in product_modules().items()
        for name in imported_names(module, path)
        if name.split(".")[0] in DEV_ONLY
    )
    assert not found, f"product modules importing the test bed, tests or benches: {found}"


def test_no_import_cycles_among_the_product_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
