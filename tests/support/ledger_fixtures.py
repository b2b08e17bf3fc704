"""Ledger fixtures: a throw-away PostgreSQL server for the session and a fresh ledger
database per test, on SQLite and on PostgreSQL (``ledger_url`` is parametrized).

PostgreSQL: CALLGATE_TEST_POSTGRES_URL when given (a server we may create databases on),
else Debian's initdb / pg_ctl (``make test`` installs ``postgresql`` when missing) on a free
port with its socket in the data directory. initdb refuses to run as root: as root the
server runs as the ``postgres`` user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
               "/usr/lib/postgresql/15/bin")


def _pg_bin(name: str) -> str:
    for d in PG_BIN_DIRS:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install Debian's postgresql package (make test does)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    given = os.environ.get("CALLGATE_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    base = Path(tempfile.mkdtemp(prefix="callgate-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = _free_port()
    subprocess.run(_as_pg_user([_pg_bin("initdb"), "-D", str(data), "-U", "postgres",
                                "--auth=trust", "-E", "UTF8", "--no-sync"]),
                   check=True, capture_output=True)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-w",
                                "-l", str(base / "log"), "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate",
                                    "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


async def _create_database(server_url: str) -> str:
    name = "t_" + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger database URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return await _create_database(request.getfixturevalue("postgres_url"))
