"""The package's shape: no import cycles between nst modules (module-level imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import nst

ROOT = Path(nst.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    mods = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: deferred imports are
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:  # on purpose
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph[n]):
            # A submodule importing its own package's __init__ is how packages work, not a cycle.
            if n.startswith(d + "."):
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d, [*stack, d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


def test_the_config_tree_ships_inside_the_package():
    conf = ROOT / "conf"
    assert (conf / "config.yaml").is_file()
    assert {p.name for p in conf.iterdir() if p.is_dir()} >= {"backbone", "experiment", "logger"}
