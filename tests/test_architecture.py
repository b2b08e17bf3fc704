"""The import graph of gateway/ draws the layers: no cycle, and no layer imports one above it.

    gateway.cli                          the command; nothing imports it (but __main__)
    gateway.http                         the API
    gateway.ledger, gateway.notify       off the call path; never the API or the command
    gateway.rules                        the decisions; never http, ledger, notify or cli
    gateway.redis                        the store; the root modules only
    gateway.{config,errors,metrics,...}  the root modules

Every ``import`` counts, those inside functions too (parsed with ast, nothing is run): an
import deferred into a function still ties the two modules together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
LAYERS = ("redis", "rules", "ledger", "notify", "http", "cli")

# What each layer must never import (besides what is above it by the rules of the house).
FORBIDDEN: dict[str, frozenset[str]] = {
    "redis": frozenset({"rules", "ledger", "notify", "http", "cli"}),
    "rules": frozenset({"ledger", "notify", "http", "cli"}),
    "ledger": frozenset({"http", "cli"}),
    "notify": frozenset({"http", "cli"}),
    "http": frozenset({"cli"}),
}

# Root modules reaching into a layer: known and few; a new one is a design decision.
ROOT_EXCEPTIONS = {
    # Rate decks and money are parsed and checked with the configuration, at start-up.
    ("gateway.config", "gateway.rules.money"),
    ("gateway.config", "gateway.rules.rating"),
    # Counting Redis's error replies (OOM) of callers that read Redis directly.
    ("gateway.metrics", "gateway.redis.client"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the module's package upwards
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield sub if sub in MODULES else module  # `from pkg import module`


def imports_of(name: str) -> set[str]:
    """The gateway modules ``name`` imports (module names as in MODULES)."""
    out = set()
    for target in _imported(name, MODULES[name]):
        while target and target not in MODULES:  # `import gateway.x.y.Name`-like: its module
            target = target.rpartition(".")[0]
        if target.startswith("gateway") and target != name:
            out.add(target)
    return out


GRAPH: dict[str, set[str]] = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> str | None:
    """``redis``, ``rules``... for a module of a layer's package; None for a root module."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or with a self-loop
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def test_the_graph_is_read() -> None:
    """The parser sees what it should: a module known to import another, in a function."""
    assert "gateway.rules.calls" in GRAPH["gateway.http.web"]
    assert "gateway.ledger.sqlite" in GRAPH["gateway.ledger"]  # inside open_ledger
    assert len(MODULES) > 50


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("lower", sorted(FORBIDDEN))
def test_no_layer_imports_one_above_it(lower: str) -> None:
    wrong = sorted((name, target) for name, targets in GRAPH.items() if layer(name) == lower
                   for target in targets if layer(target) in FORBIDDEN[lower])
    assert wrong == []


def test_nothing_imports_the_command_but_main() -> None:
    wrong = sorted((name, target) for name, targets in GRAPH.items()
                   if layer(name) != "cli" and name != "gateway.__main__"
                   for target in targets if layer(target) == "cli")
    assert wrong == []


def test_root_modules_import_root_modules() -> None:
    """config, errors, metrics, vocab...: the bottom, save the few known exceptions."""
    reaching = {(name, target) for name, targets in GRAPH.items()
                if layer(name) is None and name not in ("gateway", "gateway.__main__")
                for target in targets if layer(target) is not None}
    assert reaching == ROOT_EXCEPTIONS
