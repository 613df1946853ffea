"""The layout's rules (docs/architecture.md), checked on the source: which package may import
which, and no import circles between modules (imports at module level, TYPE_CHECKING blocks
excluded, since those never run)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ikev2", "esp", "vpn_gw")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported when ``name`` is imported (module level, incl. try/if bodies)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.If):
                if not _is_type_checking(node):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    out.add(a.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                out.add(base)
                for a in node.names:
                    out.add(f"{base}.{a.name}")  # `from pkg import module`
    visit(tree.body)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _top_level_imports(path, name, known) for name, path in mods.items()}


def _all_imports(path: Path) -> set[str]:
    """Every module named in an import anywhere in the file (also inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_protocol_core_does_not_import_the_daemon():
    for name, path in _modules().items():
        if name.split(".")[0] in ("ikev2", "esp"):
            bad = sorted(m for m in _all_imports(path) if m.split(".")[0] == "vpn_gw")
            assert not bad, f"{name} imports {bad}: the protocol core must not depend on the daemon"


def test_transports_and_data_planes_do_not_import_the_daemon():
    for name, path in _modules().items():
        if name.startswith(("vpn_gw.transport", "vpn_gw.dataplane")):
            bad = sorted(m for m in _all_imports(path) if m.startswith("vpn_gw.daemon"))
            assert not bad, f"{name} imports {bad}: it must get what it needs through an interface"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles in the graph, each as a path that returns to its start; a package's
    ``__init__`` importing its own submodules (or a submodule its package) does not count."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                dfs(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            dfs(n)

    def own_package(c: list[str]) -> bool:
        heads = set(c)
        return any(all(x == h or x.startswith(h + ".") for x in heads) for h in heads)
    return [c for c in cycles if not own_package(c)]


def test_no_import_circles():
    cycles = find_cycles(_graph())
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_circle_finder():
    assert find_cycles({"a.x": {"a.y"}, "a.y": {"b.z"}, "b.z": {"a.x"}, "d": set()}) == [
        ["a.x", "a.y", "b.z", "a.x"]]
    assert find_cycles({"a.x": {"a.y"}, "a.y": set()}) == []
    # a package and its submodule importing each other is how packages re-export: not a circle
    assert find_cycles({"p": {"p.m"}, "p.m": {"p"}}) == []
