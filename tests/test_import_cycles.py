"""No import cycles inside mbt/: every module can be read from the bottom up.

Walks every ``import`` statement of every module under ``mbt/`` with
:mod:`ast` -- including imports inside functions, which only hide a cycle --
and fails naming the modules of each cycle found.
"""

import ast
import os
from typing import Dict, List, Set

import mbt

ROOT = os.path.dirname(os.path.abspath(mbt.__file__))


def module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-len(".py")]
    parts = rel.split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules() -> Dict[str, str]:
    """mbt module name -> file path."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                found[module_name(path)] = path
    return found


def imports_of(name: str, path: str, modules: Set[str]) -> Set[str]:
    """The mbt modules ``name`` imports, anywhere in its body."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the module pkg.sub when there is one.
            targets = [source] + ["%s.%s" % (source, a.name) for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]        # import a.b.c names module a.b if c is a class
            if t and t != name and t != "mbt":
                out.add(t)
    return out


def import_graph() -> Dict[str, Set[str]]:
    modules = find_modules()
    names = set(modules)
    return {name: imports_of(name, path, names) for name, path in modules.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from mbt.peer import node\n    import mbt.tls\n")
    assert imports_of("mbt.x", str(path), {"mbt.peer.node", "mbt.tls", "mbt.peer"}) == \
        {"mbt.peer", "mbt.peer.node", "mbt.tls"}


def test_mbt_has_no_import_cycles():
    graph = import_graph()
    assert "mbt.peer.node" in graph and graph["mbt.peer.node"], "the walk found no imports"
    assert cycles(graph) == []


def test_protocols_do_not_import_services():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("mbt.protocols."):
            assert "mbt.tracker.service" not in deps, name
    assert not any(d.startswith("mbt.tracker.") for d in graph["mbt.peer.runner"])
