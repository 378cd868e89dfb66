"""The import graph of milr: built from the source (every import, inside functions too, via
ast); it must have no cycle and no function-local import of a milr module (docs/DESIGN.md,
"Layers")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "milr"


def _target(node: ast.AST, module: str) -> list[str]:
    """milr modules an import statement in ``milr.<module>`` names."""
    out = []
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            base = node.module or ""
            if base == "milr" or base.startswith("milr."):
                parts = base.split(".")[1:]
                if parts:
                    out.append(parts[0])
                else:  # from milr import x
                    out += [a.name for a in node.names]
        elif node.level == 1:
            if node.module:
                out.append(node.module.split(".")[0])
            else:  # from . import x
                out += [a.name for a in node.names]
    elif isinstance(node, ast.Import):
        for a in node.names:
            if a.name.startswith("milr."):
                out.append(a.name.split(".")[1])
    modules = {p.stem for p in PKG.glob("*.py")}
    return [m for m in out if m in modules and m != module]


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """``(graph, local)``: graph[module] = milr modules it imports anywhere; local = every
    import of a milr module inside a function, as (module, line, target)."""
    graph, local = {}, []
    for path in sorted(PKG.glob("*.py")):
        mod = path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[mod] = set()
        for node in ast.walk(tree):
            graph[mod].update(_target(node, mod))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    for t in _target(node, mod):
                        local.append((mod, node.lineno, t))
    return graph, local


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_the_checker_finds_cycles_and_local_imports(tmp_path, monkeypatch):
    """The checks can fail: a two-module cycle through a function-local import is found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    pkg = tmp_path / "milr"
    pkg.mkdir()
    (pkg / "low.py").write_text("def f():\n    from .high import g\n    return g\n")
    (pkg / "high.py").write_text("from .low import f\n\ndef g():\n    return f\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    graph, local = import_graph()
    assert graph == {"low": {"high"}, "high": {"low"}}
    assert local == [("low", 2, "high")]
    assert find_cycle(graph) in (["high", "low", "high"], ["low", "high", "low"])


def test_milr_imports_form_a_dag_without_function_local_imports():
    graph, local = import_graph()
    assert {"train", "search", "store", "sweep", "cli"} <= set(graph)  # it read the package
    assert graph["train"] >= {"config", "models"} and "search" in graph["sweep"]
    assert local == [], f"function-local imports of milr modules: {local}"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("low,high", [("config", "train"), ("models", "train"),
                                      ("train", "search"), ("search", "store"),
                                      ("store", "sweep"), ("sweep", "cli"),
                                      ("store", "custom"), ("search", "custom"),
                                      ("custom", "sweep")])
def test_lower_layers_never_reach_higher_ones(low, high):
    """The layers of docs/DESIGN.md: nothing a lower module imports (transitively) is
    higher."""
    graph, _ = import_graph()
    seen, todo = set(), [low]
    while todo:
        n = todo.pop()
        for m in graph[n] - seen:
            seen.add(m)
            todo.append(m)
    assert high not in seen, f"milr.{low} imports milr.{high} (through {sorted(seen)})"
