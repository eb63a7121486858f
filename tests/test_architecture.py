"""The package's import structure: no cycles, and dependencies that only point down.

The layers, bottom to top (CONTRIBUTING.md has the map):

0. shared: ``config`` and ``_core`` (layouts, reductions, checks, compile
   options, the CUDA backend);
1. backends: a concept's ``_cpu`` (``@njit``), ``_cuda`` (``@cuda.jit``) and
   ``_cuda_driver`` (host side of the CUDA kernels) modules, and ``_common``,
   what a concept's facade and backends share;
2. the API: the concept packages (``batch_norm``, ``sgd``, ``normalizations``,
   ``schedulers``, ``nn``, ``distributed``), the registry, the testing kit
   and the examples;
3. front ends: ``cli``, ``bench``, ``plotting``, ``__main__``.

A module imports only from its own layer or below, and a backend imports no
other concept's backend (what kernels of several concepts share is in
``_core``). Imports inside functions
count (a lazy import is still a dependency), and so do
``importlib.import_module("...")`` calls with a constant name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnsgd_numba"
BACKEND_MODULES = ("_cpu", "_cuda", "_cuda_driver", "_common")
FRONT_ENDS = ("cli", "bench", "plotting", "__main__")
LAYER_NAMES = ("shared", "backend", "API", "front end")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The layer index of a module of the package (0 is the bottom)."""
    parts = module.split(".")[1:]
    if not parts:
        return 2  # the lazy facade imports nothing statically
    if parts[0] in ("config", "_core"):
        return 0
    if parts[0] in FRONT_ENDS:
        return 3
    if len(parts) >= 2 and parts[-1] in BACKEND_MODULES:
        return 1
    return 2


def _resolve(module: str, node: ast.AST) -> set[str]:
    # the package modules an import statement or import_module call names
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            if MODULES[module].name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
    elif isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        candidates = [node.args[0].value]
    found = set()
    for candidate in candidates:
        while candidate and candidate not in MODULES:
            candidate = candidate.rpartition(".")[0]
        if candidate.startswith("bnsgd_numba"):
            found.add(candidate)
            if isinstance(node, ast.ImportFrom):
                break  # "from pkg import name": pkg.name when it is a module, else pkg
    return found


def _is_import_module(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (its own parent packages left out)."""
    graph = {}
    for module, path in MODULES.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)) or _is_import_module(node):
                targets |= _resolve(module, node)
        graph[module] = {
            target for target in targets if target != module and not module.startswith(target + ".")
        }
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer into a higher one, as readable lines."""
    return [
        f"{module} ({LAYER_NAMES[layer_of(module)]}) imports {target} "
        f"({LAYER_NAMES[layer_of(target)]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]


def test_the_package_has_no_import_cycle():
    assert import_cycles(import_graph()) == []


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(import_graph()) == []


def cross_concept_backend_imports(graph: dict[str, set[str]]) -> list[str]:
    """Backend modules importing another concept's backend (they share through _core)."""
    return [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        if layer_of(module) == 1
        for target in sorted(targets)
        if layer_of(target) == 1 and target.split(".")[1] != module.split(".")[1]
    ]


def test_no_backend_imports_another_concepts_backend():
    assert cross_concept_backend_imports(import_graph()) == []


def test_the_cross_concept_check_catches_one():
    graph = import_graph()
    graph["bnsgd_numba.sgd._cuda"] = graph["bnsgd_numba.sgd._cuda"] | {
        "bnsgd_numba.batch_norm._cuda"
    }
    assert cross_concept_backend_imports(graph) == [
        "bnsgd_numba.sgd._cuda imports bnsgd_numba.batch_norm._cuda"
    ]


def test_the_package_facade_imports_nothing_eagerly():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    eager = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bnsgd_numba")
    ]
    assert eager == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import bnsgd_numba.sgd.functional\n", "upward"),
        ("from bnsgd_numba.cli import train\n", "upward"),
        ("def f():\n    from bnsgd_numba.batch_norm import functional\n", "upward"),
        ("import importlib\nimportlib.import_module('bnsgd_numba.nn.training')\n", "upward"),
        ("from bnsgd_numba._core import layouts\n", "fine"),
    ],
)
def test_the_checks_catch_an_upward_import(monkeypatch, source, expected):
    # the walk itself can fail: a backend module that imports a facade is caught
    fake = PACKAGE / "batch_norm" / "_cpu.py"
    real_read = Path.read_text
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: source if self == fake else real_read(self)
    )
    found = [
        line
        for line in upward_imports(import_graph())
        if line.startswith("bnsgd_numba.batch_norm._cpu ")
    ]
    assert bool(found) == (expected == "upward")


def test_the_checks_catch_a_cycle():
    graph = import_graph()
    graph["bnsgd_numba._core.layouts"] = graph["bnsgd_numba._core.layouts"] | {
        "bnsgd_numba.batch_norm._cpu"
    }
    pair = {"bnsgd_numba._core.layouts", "bnsgd_numba.batch_norm._cpu"}
    assert any(pair <= set(cycle) for cycle in import_cycles(graph))
