"""The shape of the house, read from the source: no import circle among our modules, arrows
that point down the layers, and a producer API that loads none of the worker's execution
modules (and so no Celery app built from the environment)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "modelproxy", "emulator", "worker", "producer", "gateway")
# What each package may import of ours, besides itself (the layers, top to bottom).
ALLOWED = {
    # The gateway is a front door built on the producer's API; the producer only starts it
    # as a process (`mpq gateway` runs `python -m gateway`).
    "gateway": {"core", "modelproxy", "producer"},
    "producer": {"core", "modelproxy", "worker", "emulator"},
    "worker": {"core", "modelproxy"},
    "core": set(),
    "emulator": {"modelproxy"},
    "modelproxy": set(),
}
# The producer's API: what a program that submits jobs imports.
PRODUCER_API = ("producer.client", "producer.jobs", "producer.batches", "producer.batch_format",
                "producer.stream_reader", "core.dispatch", "core.celery_app")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def targets_of(node: ast.AST, package: str) -> list[str]:
    """The dotted names an import statement may bring in (a module or a module's member)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parents = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parents, base] if base else parents)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports (anywhere in the file, lazily too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        for dotted in targets_of(node, package):
            module = dotted
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                found.append(sorted(component))

    for root in sorted(graph):
        if root not in index:
            visit(root)
    return found


def test_no_import_circle() -> None:
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_arrows_point_down_the_layers() -> None:
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in import_graph().items()
        for target in targets
        if (top := target.split(".")[0]) != name.split(".")[0]
        and top not in ALLOWED[name.split(".")[0]]
    )
    assert upward == []


def test_the_emulator_uses_only_the_clients_signing() -> None:
    """It has its own wire models, so it and the client check each other."""
    borrowed = {target for name, targets in import_graph().items() if name.startswith("emulator")
                for target in targets if target.startswith("modelproxy")}
    assert borrowed <= {"modelproxy.signing", "modelproxy.signing.acs3",
                        "modelproxy.signing.agentrun4"}


@pytest.mark.parametrize("module", PRODUCER_API)
def test_the_producer_api_loads_no_worker_module(module: str) -> None:
    """Imported in a fresh interpreter: which of our worker modules came along, and whether
    a Celery app was built on the way."""
    probe = (
        f"import json, sys, celery._state as state; import {module}; "
        "print(json.dumps({'worker': sorted(m for m in sys.modules "
        "if m == 'worker' or m.startswith('worker.')), "
        "'apps': len(list(state._get_active_apps()))}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == {"worker": [], "apps": 0}
