"""The layout's rules (docs/architecture.md, docs/engine.md), checked on the source:

- the engine packages (ikev2/, esp/) import each other without circles, counting every import,
  also one inside a function;
- the whole project has no circles among the imports that run when a module is imported
  (module level, TYPE_CHECKING blocks excluded: those never run);
- ikev2/ and esp/ never import vpn_gw/; vpn_gw/transport/ and vpn_gw/dataplane/ never import
  vpn_gw/daemon/ (they are given interfaces)."""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(*packages: str) -> dict[str, Path]:
    """Every module of the packages: the Python ones and the compiled extensions (a ``.c``
    source, built by setup.py as the module of that name, e.g. esp/_aead.c -> esp._aead), which
    import nothing of the project."""
    return {module_name(p): p for pkg in packages for pattern in ("*.py", "*.c")
            for p in (ROOT / pkg).rglob(pattern)}


def resolve(importer: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _module_level(stmts: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run on import: module level, inside if/try, not under TYPE_CHECKING."""
    for node in stmts:
        if isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body)
            for h in node.handlers:
                yield from _module_level(h.body)
            yield from _module_level(node.orelse)
            yield from _module_level(node.finalbody)
        else:
            yield node


def import_graph(*packages: str, everywhere: bool) -> dict[str, set[str]]:
    """Module -> project modules it imports. everywhere: every import statement (also inside
    functions); otherwise only those that run when the module is imported."""
    files = modules(*packages)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        if path.suffix == ".c":
            continue  # a compiled extension: no Python imports
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.walk(tree) if everywhere else _module_level(tree.body)
        for node in nodes:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(mod, is_package, node.level, node.module)
                # "from . import payloads" names a module; "from .x import Name" names module x.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # "ikev2.crypto.dh.X" -> the module that holds it
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]], ignore_own_package: bool = False) -> list[str] | None:
    """One import circle (a path back to its start), or None. ignore_own_package: a package's
    __init__ and its own submodules importing each other (how packages re-export) is no circle."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def own_package(a: str, b: str) -> bool:
        return ignore_own_package and (a.startswith(b + ".") or b.startswith(a + "."))

    def visit(m: str) -> list[str] | None:
        colour[m] = GREY
        stack.append(m)
        for n in sorted(graph[m]):
            if own_package(m, n):
                continue
            if colour[n] == GREY:
                return stack[stack.index(n):] + [n]
            if colour[n] == WHITE and (cycle := visit(n)):
                return cycle
        stack.pop()
        colour[m] = BLACK
        return None

    for m in sorted(graph):
        if colour[m] == WHITE and (cycle := visit(m)):
            return cycle
    return None


def test_graph_sees_known_edges():
    graph = import_graph("ikev2", "esp", everywhere=True)
    assert "ikev2.sa_core" in graph["ikev2.exchange_auth"]
    assert "ikev2.payloads" in graph["ikev2.exchange_auth"]  # "from . import payloads as P"
    assert "ikev2.crypto.kex" in graph["ikev2.sa_common"]
    assert "ikev2.crypto.mlkem" in graph["ikev2.crypto.dh"]
    daemon = import_graph("ikev2", "esp", "vpn_gw", everywhere=False)
    assert "vpn_gw.transport.tcp" in daemon["vpn_gw.daemon.gateway"]
    assert "vpn_gw.daemon" not in daemon["vpn_gw.transport.tcp"]  # only under TYPE_CHECKING, if at all


def test_find_cycle_detects_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert find_cycle({"p": {"p.m"}, "p.m": {"p"}}) == ["p", "p.m", "p"]
    assert find_cycle({"p": {"p.m"}, "p.m": {"p"}}, ignore_own_package=True) is None


def test_engine_imports_are_acyclic():
    assert find_cycle(import_graph("ikev2", "esp", everywhere=True)) is None


def test_project_import_time_graph_is_acyclic():
    assert find_cycle(import_graph("ikev2", "esp", "vpn_gw", everywhere=False), ignore_own_package=True) is None


def test_protocol_core_does_not_import_the_daemon():
    graph = import_graph("ikev2", "esp", "vpn_gw", everywhere=True)
    for mod, deps in graph.items():
        if mod.split(".")[0] in ("ikev2", "esp"):
            bad = sorted(d for d in deps if d.startswith("vpn_gw"))
            assert not bad, f"{mod} imports {bad}: the protocol core must not depend on the daemon"


def test_transports_and_data_planes_do_not_import_the_daemon():
    graph = import_graph("ikev2", "esp", "vpn_gw", everywhere=True)
    for mod, deps in graph.items():
        if mod.startswith(("vpn_gw.transport", "vpn_gw.dataplane")):
            bad = sorted(d for d in deps if d.startswith("vpn_gw.daemon"))
            assert not bad, f"{mod} imports {bad}: it must get what it needs through an interface"
