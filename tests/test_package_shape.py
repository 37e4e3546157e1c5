"""The package's shape: no import circle between its modules (lazy imports included), no module over 900 lines."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_vitprune"


def import_graph(package: Path) -> dict[str, set[str]]:
    """`{module: modules of the package it imports}`, from every relative import anywhere in its source (a lazy
    import inside a function counts as much as one at the top)."""
    modules = {path.stem for path in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    imported.add(node.module.split(".")[0])
                else:
                    imported.update(alias.name for alias in node.names)
        graph[path.stem] = {name for name in imported & modules if name not in (path.stem, "__init__")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as `[a, b, ..., a]`, or `None` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_lazy_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_inside_the_package():
    graph = import_graph(PACKAGE)
    assert {"cli", "evaluation", "train", "token_reduction"} <= set(graph)
    assert find_cycle(graph) is None


def test_no_module_over_900_lines():
    long = {path.name: n for path in PACKAGE.glob("*.py") if (n := len(path.read_text().splitlines())) > 900}
    assert long == {}, "split these along their seams"
