"""The package's layers only look down: no import cycle between its modules, lazy imports included.

Every ``import`` / ``from ... import`` statement of every module counts, wherever it stands (module
level or inside a function), and so does ``saliency_fast.NAME`` after ``import saliency_fast``: the
package's lazy ``__getattr__`` imports the module that defines ``NAME`` (its ``_EXPORTS`` table).
"""

from __future__ import annotations

import ast
import pathlib

import saliency_fast

ROOT = pathlib.Path(saliency_fast.__file__).resolve().parent


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ["saliency_fast", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _exports() -> dict[str, str]:
    tree = ast.parse((ROOT / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("saliency_fast/__init__.py has no _EXPORTS table")


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (directly or through the lazy package attributes)."""
    modules, exports = _modules(), _exports()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        deps = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names if a.name.startswith("saliency_fast"))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("saliency_fast"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else owner(exports.get(alias.name, node.module))
                             if node.module == "saliency_fast" else owner(full))
            elif isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "saliency_fast":
                if node.attr in exports:
                    deps.add(exports[node.attr])
        deps.discard(None)
        deps.discard(name)
        deps.discard("saliency_fast")  # the package facade itself defines nothing but the lazy table
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_lazy_imports():
    """A function-level import closing a loop is a cycle; so is one through the package's lazy names."""
    graph = import_graph()
    assert "saliency_fast.hf.generation" in graph["saliency_fast.hf.explainer"]  # a lazy import, inside a method
    assert "saliency_fast.result" in graph["saliency_fast.hf.generation"]  # saliency_fast.AttributionResult
    assert cycles({**graph, "saliency_fast.result": {"saliency_fast.hf.generation"}})
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_metrics_stays_free_of_hf():
    assert not {d for d in import_graph()["saliency_fast.metrics"] if d.startswith("saliency_fast.hf")}
