"""The package's folders are its layers: a module imports only from its own folder and the folders below it,
and no module imports one that imports it back. Read from the source (every import, also those inside
functions), so a lazy import cannot hide an upward edge."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bnbench"

# Lowest first. The ground (config, plugins, errors, records, naming) is `bnbench` itself.
LAYERS = ["bnbench", "bnbench.nn", "bnbench.training", "bnbench.runs", "bnbench.evidence", "bnbench.tools",
          "bnbench.cli"]  # fmt: skip
# Public old import paths kept for users' code, and the Python API (bnbench.api: load, compare, judge, run,
# sweep, built on every layer): they sit above everything, like the CLI.
ALIASES = {"bnbench.norms", "bnbench.__main__", "bnbench.api"}
# The one edge up allowed: the package's lazy export of the API (PEP 562 __getattr__, imported on first use).
LAZY_EXPORTS = {("bnbench", "bnbench.api")}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "examples":  # shipped example files for users (data), not bnbench's modules
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer_of(module: str) -> int:
    if module in ALIASES:
        return len(LAYERS)
    package = module if (PACKAGE.parent / module.replace(".", "/")).is_dir() else module.rpartition(".")[0]
    return LAYERS.index(package)


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The bnbench modules `module` imports, resolved to modules (from bnbench.x import y: bnbench.x.y
    where that is a module, else bnbench.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: from ..cli import display inside bnbench/nn/models.py
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                source = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        found.update(n for n in names if n in known and n != module and n != "bnbench")
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_sits_in_a_known_layer():
    for name in modules():
        assert layer_of(name) >= 0, name


def test_imports_point_down_the_layers():
    upward = [f"{a} (layer {LAYERS[min(layer_of(a), len(LAYERS) - 1)]}) imports {b} (layer "
              f"{LAYERS[min(layer_of(b), len(LAYERS) - 1)]})" for a, targets in graph().items() for b in sorted(targets)
              if layer_of(b) > layer_of(a) and (a, b) not in LAZY_EXPORTS]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_module_imports_one_that_imports_it_back():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_the_checks_catch_a_planted_upward_import_and_circle(tmp_path, monkeypatch):
    """The two checks above can fail: a planted package with an upward import and a circle is caught."""
    pkg = tmp_path / "bnbench"
    for folder in ("nn", "evidence"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from bnbench.nn import norms\n")  # the ground importing a layer above it
    (pkg / "nn" / "norms.py").write_text("def f():\n    from bnbench.evidence import compare\n")
    (pkg / "evidence" / "compare.py").write_text("import bnbench.nn.norms\n")
    (pkg / "nn" / "models.py").write_text("def f():\n    from ..evidence import compare\n")  # relative
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    edges = graph()
    assert edges["bnbench.config"] == {"bnbench.nn.norms"}
    assert edges["bnbench.nn.norms"] == {"bnbench.evidence.compare"}
    assert edges["bnbench.evidence.compare"] == {"bnbench.nn.norms"}
    with_upward = [(a, b) for a, t in edges.items() for b in t if layer_of(b) > layer_of(a)]
    assert ("bnbench.nn.norms", "bnbench.evidence.compare") in with_upward
    assert ("bnbench.config", "bnbench.nn.norms") in with_upward
    assert ("bnbench.nn.models", "bnbench.evidence.compare") in with_upward


def test_the_documented_import_paths_still_import():
    from bnbench.nn import BatchNorm
    from bnbench.nn.norms import BatchNorm as canonical
    from bnbench.norms import BatchNorm as old_path

    assert BatchNorm is canonical is old_path
