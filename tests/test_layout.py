"""The house rules of the package layout (README "Layout"): imports flow one way, from the command line down to
the core, with no cycle between modules and no private name taken from another module."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each package may import only packages of a lower rank (and `itd` itself, for `__version__`).
RANK = {"core": 0, "prompts": 0, "llm": 1, "embed": 1, "detectors": 2, "corpus": 3, "probes": 4, "rewriters": 5, "evaluation": 5,
        "lab": 6, "pipeline": 7, "cli": 8}
ENTRY = {"itd", "itd.__main__", "itd.moved"}  # the package root, `python -m itd` and the moved-paths table


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (ROOT / "itd").rglob("*.py")}


def _imports(modules: dict[str, Path]):
    """(importing module, imported module or name, the names, line) of every `itd` import, lazy ones included."""
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "itd":
                yield module, node.module, [a.name for a in node.names], node.lineno
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "itd":
                        yield module, alias.name, [], node.lineno


def _package(module: str) -> str:
    return module.split(".")[1]


def test_every_package_has_a_rank():
    modules = _modules()
    assert {_package(m) for m in modules if m not in ENTRY} == set(RANK)


def test_packages_import_only_lower_packages():
    modules = _modules()
    upward = [f"{m}:{line} imports {target}" for m, target, _, line in _imports(modules)
              if m not in ENTRY and target != "itd" and _package(m) != _package(target)
              and RANK[_package(target)] >= RANK[_package(m)]]
    assert upward == []


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for m, target, names, _ in _imports(modules):
        for t in [target, *(f"{target}.{n}" for n in names)]:
            if t in modules and t != m and t not in ENTRY:
                graph[m].add(t)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def cycle_from(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return [*path[path.index(t):], t] if t in path else [m, t]
            if t not in state and (found := cycle_from(t, [*path, t])):
                return found
        state[m] = 2
        return None

    for m in sorted(modules):
        if m not in state:
            assert cycle_from(m, [m]) is None


def test_no_private_name_crosses_a_module():
    crossing = [f"{m}:{line} takes {target}.{n}" for m, target, names, line in _imports(_modules())
                for n in names if n.startswith("_") and not n.startswith("__") and target != m]
    assert crossing == []
