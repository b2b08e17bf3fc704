"""docs/architecture.md's index of the rules (D1-D33 → where → tests) names things that
exist: every Python name resolves in the package, every Lua name is a function of the
library, every test file and test function is there. A rename that forgets the index
fails here."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()
LUA = "\n".join(p.read_text() for p in sorted((ROOT / "lua").glob("*.lua")))
TESTS = ROOT / "tests"

ROWS = [line for line in DOC.splitlines() if re.match(r"\| D[0-9]", line)]


def _clauses(cell: str, kind: str) -> list[str]:
    """The backticked names of the "Lua …" or "Py …" clauses of a cell, hints in
    parentheses left out."""
    names: list[str] = []
    for clause in re.split(r";", cell):
        clause = clause.strip()
        if not clause.startswith(kind + " "):
            continue
        bare = re.sub(r"\([^)]*\)", "", clause)
        names += re.findall(r"`([^`]+)`", bare)
    return names


def _lua_defines(name: str) -> bool:
    return re.search(rf"(local function {name}\b|function {name}\b|local {name} = function"
                     rf"|register_function\(['\"]{name}['\"])", LUA) is not None


def test_the_index_covers_every_rule() -> None:
    covered = set()
    for row in ROWS:
        covered |= {int(n) for n in re.findall(r"D([0-9]+)", row.split("|")[1])}
    assert covered == set(range(1, 34))


@pytest.mark.parametrize("row", ROWS, ids=[r.split("|")[1].strip()[:12] for r in ROWS])
def test_every_name_of_the_index_exists(row: str) -> None:
    _, rule, where, tests, _ = row.split("|")
    for name in _clauses(where, "Py"):
        parts = name.split(".")
        # the longest importable prefix of gateway.<name>, then attributes
        for i in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module("gateway." + ".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"{rule}: gateway.{name}: no {attr}"
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"{rule}: gateway.{name}: no such module")
    for name in _clauses(where, "Lua"):
        for fn in re.findall(r"[a-z_]+", name):
            assert _lua_defines(fn), f"{rule}: Lua {fn} is not defined in lua/"
    for ref in re.findall(r"`(test_[a-z0-9_]+\.py)(?:::([a-z0-9_]+)(…)?)?`", tests):
        path = TESTS / ref[0]
        assert path.exists(), f"{rule}: {ref[0]} does not exist"
        if ref[1]:
            defs = re.findall(r"^(?:async )?def (test_[a-z0-9_]+)", path.read_text(), re.M)
            match = [d for d in defs if d == ref[1] or (ref[2] and d.startswith(ref[1]))]
            assert match, f"{rule}: {ref[0]}::{ref[1]} does not exist"
