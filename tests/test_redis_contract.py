"""The Lua side of the Redis contract against its Python side (gateway/redis/contract.py):
each function's header (KEYS, ARGV, REPLY, ERRORS lines), the shared constants, the
hash-field prefixes, the event types, and the structure of lua/ (library files 00-09 declare,
every other file registers one function and uses only what a library file declared)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from gateway.redis import contract
from gateway.redis.store import AuthorizeArgs, library_source

LUA = Path(__file__).resolve().parent.parent / "lua"
FILES = sorted(LUA.glob("*.lua"))
LIBRARY = [f for f in FILES if int(f.name[:2]) < 10]
OPERATIONS = [f for f in FILES if int(f.name[:2]) >= 10]


class Header(NamedTuple):
    keys: tuple[str, ...]
    keys_rest: str
    argv: tuple[str, ...]
    argv_rest: str
    reply: tuple[str, ...]
    errors: frozenset[str]
    packed: bool


def registered(text: str) -> list[str]:
    return re.findall(r"redis\.register_function\s*[({]\s*(?:function_name\s*=\s*)?'(\w+)'",
                      text)


def parse_header(text: str) -> Header:
    """The machine-readable lines of a file's first --[[ ]] block: ``KEYS[i] name``,
    ``ARGV[i] name``, ``KEYS[i..] name`` (a repeated tail), ``REPLY {OK, name, ...}`` (may
    run on over indented lines), ``ERRORS NAME ...`` (status names, first line) and
    ``PACKED`` (ARGV sent as one argument)."""
    block = text.split("--[[", 1)[1].split("--]]", 1)[0]
    lists: dict[str, list[tuple[int, str]]] = {"KEYS": [], "ARGV": []}
    rest = {"KEYS": "", "ARGV": ""}
    for kind, index, dots, name in re.findall(r"^(KEYS|ARGV)\[(\d+)(\.\.)?\]\s+(\w+)", block,
                                              re.MULTILINE):
        if dots:
            rest[kind] = name
        else:
            lists[kind].append((int(index), name))
    for kind, items in lists.items():
        assert [i for i, _ in items] == list(range(1, len(items) + 1)), (kind, items)
    reply = re.search(r"^REPLY\s+\{OK((?:,\s*\w+)*)\s*\}", block, re.MULTILINE)
    assert reply, "no REPLY {OK, ...} line"
    errors = re.search(r"^ERRORS\s+([A-Z_ ]+)", block, re.MULTILINE)
    return Header(tuple(n for _, n in lists["KEYS"]), rest["KEYS"],
                  tuple(n for _, n in lists["ARGV"]), rest["ARGV"],
                  tuple(re.findall(r"\w+", reply.group(1))),
                  frozenset(errors.group(1).split()) if errors else frozenset(),
                  re.search(r"^PACKED\s", block, re.MULTILINE) is not None)


def mismatches(header: Header, f: contract.Function[Any]) -> list[str]:
    """What differs between a header and a function's contract, one line each."""
    python = Header(f.keys, f.keys_rest, f.argv, f.argv_rest,
                    tuple(f.reply._fields[1:]),
                    frozenset(s.name for s in f.errors), f.packed)
    return [f"{f.name} {field}: lua {lua!r} != python {py!r}"
            for field, lua, py in zip(Header._fields, header, python, strict=True)
            if lua != py]


@pytest.mark.parametrize("path", OPERATIONS, ids=lambda p: p.name)
def test_each_lua_header_declares_the_keys_argv_and_reply_of_its_python_contract(
        path: Path) -> None:
    text = path.read_text()
    (name,) = registered(text)  # one registered operation per file
    assert name in contract.FUNCTIONS, f"{name} has no entry in gateway/redis/contract.py"
    assert mismatches(parse_header(text), contract.FUNCTIONS[name]) == []


def test_every_contract_function_is_registered_once_and_library_files_register_none() -> None:
    names = [n for f in OPERATIONS for n in registered(f.read_text())]
    assert sorted(names) == sorted(contract.FUNCTIONS)
    assert [f.name for f in LIBRARY if registered(f.read_text())] == []
    flagged = {n for f in OPERATIONS for n in re.findall(
        r"function_name = '(\w+)'.*?flags = \{'no-writes'\}", f.read_text(), re.DOTALL)}
    assert flagged == {f.name for f in contract.FUNCTIONS.values() if "no-writes" in f.flags}


def test_the_check_names_a_swapped_argument() -> None:
    """What the header test reports when a header and the contract disagree on order."""
    f = contract.TOPUP
    argv = list(f.argv)
    argv[2], argv[3] = argv[3], argv[2]
    header = Header(f.keys, "", tuple(argv), "", tuple(f.reply._fields[1:]),
                    frozenset(s.name for s in f.errors), False)
    (problem,) = mismatches(header, f)
    assert problem.startswith("topup argv: lua (") and "'now', 'amount_micro'" in problem


def test_authorize_args_are_the_authorize_argv_field_for_field() -> None:
    assert AuthorizeArgs._fields == contract.AUTHORIZE.argv


def test_builders_refuse_a_missing_or_unknown_name() -> None:
    f = contract.CREDITS_GET
    assert f.keys_of(tenant="t") == ["t"]
    with pytest.raises(contract.ContractError):
        f.keys_of(tenants="t")
    with pytest.raises(contract.ContractError):
        f.keys_of(tenant="t", pools="p")
    with pytest.raises(contract.ContractError):
        f.argv_of(["x"])  # no repeated tail in its contract


# -- constants, field prefixes, event types ---------------------------------------------------

CONSTANT = re.compile(r"^local ([A-Z][A-Z0-9_]*) = (-?[\d.e]+|'\d+'|\{[\d, ]+\})\s*$",
                      re.MULTILINE)


def lua_constants() -> dict[str, int | tuple[int, ...]]:
    """``local NAME = value`` of the library files: integers, '123' strings, {1, 2} lists."""
    out: dict[str, int | tuple[int, ...]] = {}
    for f in LIBRARY:
        for name, value in CONSTANT.findall(f.read_text()):
            assert name not in out, f"{name} declared twice"
            if value.startswith("{"):
                out[name] = tuple(int(v) for v in re.findall(r"-?\d+", value))
            else:
                out[name] = int(float(value.strip("'")))
    return out


def test_lua_constants_equal_the_python_ones() -> None:
    lua = lua_constants()
    assert {n: lua.get(n) for n in contract.LUA_CONSTANTS} == dict(contract.LUA_CONSTANTS)


def all_lua() -> str:
    return "\n".join(f.read_text() for f in FILES)


def test_lua_builds_hash_fields_from_the_contract_prefixes_only() -> None:
    code = re.sub(r"--.*", "", all_lua())
    assert set(re.findall(r"'([a-z]+:)'", code)) == set(contract.FIELD_PREFIXES)


def test_every_event_type_lua_writes_is_in_the_contract() -> None:
    code = re.sub(r"--.*", "", all_lua())
    literal = set(re.findall(r"'([a-z_]+\.[a-z_]+)'", code))
    # end_call writes 'call.' .. state, state ended | expired
    assert "'call.' .. state" in code
    literal |= {"call.ended", "call.expired"}
    assert literal == set(contract.EVENT_FIELDS)


# -- structure of lua/ -----------------------------------------------------------------------

KEYWORDS = {"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if",
            "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until",
            "while"}
BUILTINS = {"redis", "cjson", "cmsgpack", "bit", "struct", "string", "math", "table",
            "tonumber", "tostring", "type", "ipairs", "pairs", "unpack", "next", "select",
            "error", "pcall", "assert", "setmetatable", "getmetatable", "rawget", "rawset",
            "collectgarbage"}


def code_of(text: str) -> str:
    """Lua source without comments and string literals (a string becomes "")."""
    if text.startswith("#!"):
        text = text.split("\n", 1)[1]
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("--[[", i):
            i = text.index("]]", i) + 2
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("[[", i):
            i = text.index("]]", i) + 2
            out.append('""')
        elif text[i] in "'\"":
            q, i = text[i], i + 1
            while text[i] != q:
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def top_level_locals(code: str) -> list[str]:
    names = re.findall(r"^local function (\w+)", code, re.MULTILINE)
    for decl in re.findall(r"^local (?!function)([\w, ]+?)\s*=", code, re.MULTILINE):
        names += [n.strip() for n in decl.split(",")]
    return names


def free_names(code: str) -> set[str]:
    """Names a file reads that nothing in the file declares (scope-insensitive: a name
    declared anywhere in the file counts as its own)."""
    declared = set(re.findall(r"\blocal\s+function\s+(\w+)", code))
    # a declaration continued on the next line after a comma is one declaration
    joined = re.sub(r",[ \t]*\n[ \t]*", ", ", code)
    for group in re.findall(r"\blocal\s+(?!function)([\w,\s]+?)(?:=|\n)", joined):
        declared |= {n.strip() for n in group.split(",") if n.strip()}
    for params in re.findall(r"\bfunction\s*\w*\s*\(([^)]*)\)", code):
        declared |= {n.strip() for n in params.split(",") if n.strip()}
    for group in re.findall(r"\bfor\s+([\w,\s]+?)\s+(?:in|=)", code):
        declared |= {n.strip() for n in group.split(",")}
    used = set()
    for m in re.finditer(r"(?<!\w)[A-Za-z_]\w*", code):
        before = code[:m.start()].rstrip()
        after = code[m.end():].lstrip()
        if before.endswith((".", ":")) and not before.endswith(".."):
            continue  # a field or method
        if after.startswith("=") and not after.startswith("=="):
            continue  # a table key or an assignment (of a declared local)
        used.add(m.group())
    return used - declared - KEYWORDS - BUILTINS


def test_each_file_uses_only_names_declared_by_an_earlier_library_file() -> None:
    declared_by: dict[str, str] = {}
    problems = []
    for f in FILES:
        code = code_of(f.read_text())
        for name in sorted(free_names(code)):
            if name not in declared_by:
                problems.append(f"{f.name}: {name} is declared by no earlier library file")
        if f in LIBRARY:
            for name in top_level_locals(code):
                if name in declared_by:
                    problems.append(f"{f.name}: {name} already declared by "
                                    f"{declared_by[name]}")
                declared_by[name] = f.name
    assert problems == []


def test_the_library_chunk_stays_under_luas_200_locals() -> None:
    count = len(top_level_locals(code_of(library_source())))
    assert 50 < count < 180, count  # a margin below the limit of 200


def event_writes() -> list[tuple[str, set[str], set[str]]]:
    """Each emit / audit / announce call of lua/ with a literal data table: (file, the event
    types it may write, the data fields of the table)."""
    out = []
    for f in FILES:
        text = re.sub(r"--[^\n]*", "", f.read_text().split("--]]", 1)[-1])
        for m in re.finditer(r"\b(?:emit|audit|announce)\(", text):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            args = text[m.end():i - 1]
            types = set(re.findall(r"'([a-z_]+\.[a-z_]+)'", args))
            if "'call.' .. state" in args:
                types |= {"call.ended", "call.expired"}
            table = args[args.find("{"):]
            fields, depth = set(), 0
            for t in re.finditer(r"[{}]|(\w+)\s*=(?!=)", table):
                if t.group() in "{}":
                    depth += 1 if t.group() == "{" else -1
                elif depth == 1:
                    fields.add(t.group(1))
            if types:
                out.append((f.name, types, fields))
    return out


def test_the_fields_of_every_event_lua_writes_are_those_of_the_contract() -> None:
    writes = event_writes()
    assert len(writes) > 15
    problems = []
    for name, types, fields in writes:
        for etype in types:
            declared = set(contract.EVENT_FIELDS[etype])
            required = declared - set(contract.EVENT_OPTIONAL_FIELDS.get(etype, ()))
            if not required <= fields <= declared:
                problems.append(f"{name} {etype}: lua {sorted(fields)} != contract "
                                f"{sorted(declared)}")
    assert problems == []


def statuses_of(code: str) -> set[str]:
    """The statuses a piece of Lua returns: ``return {NAME`` (OK excluded)."""
    return set(re.findall(r"\breturn\s*\{([A-Z_]+)\b", code)) - {"OK"}


@pytest.mark.parametrize("path", OPERATIONS, ids=lambda p: p.name)
def test_each_function_answers_exactly_the_statuses_its_header_and_contract_declare(
        path: Path) -> None:
    """Its own returns, and those of the library helpers it calls (missing_call)."""
    code = code_of(path.read_text())
    answered = statuses_of(code)
    for lib in LIBRARY:
        lib_code = code_of(lib.read_text())
        for helper in top_level_locals(lib_code):
            if re.search(rf"\b{helper}\(", code):
                body = lib_code.split(f"local function {helper}(", 1)
                if len(body) == 2:
                    answered |= statuses_of(body[1].split("\nend\n", 1)[0])
    (name,) = registered(path.read_text())
    assert answered == set(parse_header(path.read_text()).errors)
    assert answered == {s.name for s in contract.FUNCTIONS[name].errors}


@pytest.mark.parametrize("path", OPERATIONS, ids=lambda p: p.name)
def test_each_error_payload_is_named_in_the_header_and_sized_in_the_lua_as_in_the_contract(
        path: Path) -> None:
    """``{STATUS, name, ...}`` in the header, and ``return {STATUS, a, b}`` in the code, for
    every status of the function that carries a payload (contract.ERROR_DETAIL)."""
    text = path.read_text()
    (name,) = registered(text)
    block = text.split("--[[", 1)[1].split("--]]", 1)[0]
    documented = {s: tuple(re.findall(r"\w+", rest))
                  for s, rest in re.findall(r"\{([A-Z][A-Z_]+)((?:,\s*\w+)+)\}", block)
                  if s != "OK"}
    expected = {s.name: contract.ERROR_DETAIL[s] for s in contract.FUNCTIONS[name].errors
                if s in contract.ERROR_DETAIL}
    assert documented == expected
    for status, payload in re.findall(r"\breturn\s*\{([A-Z][A-Z_]+)((?:,[^,{}]+)*)\}",
                                      code_of(text)):
        if status != "OK":
            assert payload.count(",") == len(contract.ERROR_DETAIL.get(
                contract.Status[status], ())), (status, payload)
