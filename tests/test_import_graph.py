"""The import graph of dustjax/, read with `ast`: no import loops, and the training engine
imports none of the methods (vnet/, polaris/, gp/, sims/), directly or through other modules.

Every import counts, the lazy ones inside functions too: a loop closed at run time is a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dustjax"
METHODS = ("dustjax.vnet", "dustjax.polaris", "dustjax.gp", "dustjax.sims")


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """``{"dustjax.training.loop": path, "dustjax.training": .../__init__.py, ...}``."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that the module `name` (file `path`) imports."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` imports the module a.b if there is one, else a name of a
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import loop of `graph` as ``[a, b, ..., a]``, or [] if there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_checks_find_what_they_look_for(tmp_path):
    """The reader and the loop finder on a small package with a known loop."""
    pkg = tmp_path / "dustjax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from dustjax import b\n")
    (pkg / "b.py").write_text("def f():\n    from dustjax.sub.c import thing\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\nimport numpy\nthing = 1\n")
    graph = import_graph(pkg)
    assert graph["dustjax.a"] == {"dustjax.b"}
    assert graph["dustjax.b"] == {"dustjax.sub.c"}  # a lazy import, of a name
    assert graph["dustjax.sub.c"] == {"dustjax.a"}  # relative, third-party ignored
    assert find_cycle(graph) == ["dustjax.a", "dustjax.b", "dustjax.sub.c", "dustjax.a"]
    (pkg / "sub" / "c.py").write_text("thing = 1\n")
    assert find_cycle(import_graph(pkg)) == []
    assert reachable(import_graph(pkg), "dustjax.a") == {"dustjax.b", "dustjax.sub.c"}


def test_dustjax_has_no_import_loop():
    graph = import_graph()
    assert "dustjax.training.loop" in graph and "dustjax.vnet.data" in graph
    assert find_cycle(graph) == []


@pytest.mark.parametrize("method", METHODS)
def test_the_engine_imports_no_method(method):
    graph = import_graph()
    engine = [name for name in graph if name.startswith("dustjax.training")]
    assert len(engine) >= 7
    for name in engine:
        bad = {m for m in reachable(graph, name) if m == method or m.startswith(method + ".")}
        assert not bad, f"{name} imports {sorted(bad)} (directly or through other modules)"
