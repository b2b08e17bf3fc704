"""gateway.redis.server against real redis-server processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import redis.cluster

from gateway.redis.server import (
    REDIS_HZ,
    RedisServer,
    RedisStartError,
    free_port,
)
from tests.support.cluster import CLUSTER_SLOTS, RedisCluster


def _accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_start_and_stop(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data", name="start-stop")
    with server:
        assert server.is_running()
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
            assert client.info("server")["process_id"] == server.pid
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert client.config_get("hz") == {"hz": str(REDIS_HZ)}
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("bind") == {"bind": "127.0.0.1"}
        unixsocket = server.unixsocket
        assert unixsocket is not None
        with redis.Redis(unix_socket_path=str(unixsocket)) as client:
            assert client.ping()
    assert not server.is_running()
    assert not _accepts_connections(server.port)
    server.stop()  # idempotent
    assert (tmp_path / "data" / "redis.log").exists()


def test_aof_survives_kill_and_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data", appendfsync="always", name="crash")
    server.start()
    try:
        port = server.port
        with redis.Redis.from_url(server.url) as client:
            client.set("balance", "1234567")
        server.kill()
        assert not server.is_running()
        server.restart()
        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.get("balance") == b"1234567"
    finally:
        server.stop()


# Three writes: Redis 7 logs them to the AOF as MULTI, INCRBY, INCRBY, SET, EXEC, as it
# does every function of ours that writes more than once.
_DEBIT = "redis.call('incrby', 'bal', 100); redis.call('incrby', 'res', -100); " \
         "redis.call('set', 'st', 'ended')"


@pytest.mark.parametrize("then", ["a_transaction", "single_writes"])
@pytest.mark.parametrize("cut", ["inside_a_command", "between_commands"])
def test_torn_transaction_in_the_aof_is_cut_before_its_multi(
        tmp_path: Path, cut: str, then: str, caplog: pytest.LogCaptureFixture) -> None:
    """A crash in the middle of the AOF write of a function's writes: none of them is ever
    applied, and what is written after the restart survives the next one. (Redis's own
    aof-load-truncated left MULTI and half the writes in the file: the second restart
    applied bal +100 / res -100 with the next transaction, or, when single writes
    followed, dropped them.)"""
    server = RedisServer(tmp_path / "data", appendfsync="always", name="torn")
    server.start()
    try:
        with redis.Redis.from_url(server.url) as client:
            client.set("before", "1")
            client.eval(_DEBIT, 0)
        server.kill()
        (incr,) = (tmp_path / "data" / "appendonlydir").glob("*.incr.aof")
        data = incr.read_bytes()
        last_set = data.rindex(b"*3\r\n$3\r\nset\r\n$2\r\nst")
        assert b"EXEC" not in data[data.rindex(b"MULTI", 0, last_set):last_set]  # inside it
        incr.write_bytes(data[:last_set + 12] if cut == "inside_a_command" else data[:last_set])

        with caplog.at_level("WARNING", logger="gateway.redis.server"):
            server.start()
        assert "torn write; cut by redis-check-aof: This will shrink" in caplog.text
        with redis.Redis.from_url(server.url) as client:
            assert client.mget("before", "bal", "res", "st") == [b"1", None, None, None]
            client.set("acked", "yes")
            if then == "a_transaction":
                client.eval("redis.call('incrby', 'bal', 7); redis.call('set', 'x', 'y')", 0)
            else:
                client.incrby("bal", 7)
                client.set("x", "y")
        server.kill()
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.mget("before", "bal", "res", "st", "acked", "x") == [
                b"1", b"7", None, None, b"yes", b"y"]
    finally:
        server.stop()


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data", extra_args=["--no-such-directive", "1"])
    with pytest.raises(RedisStartError, match="no-such-directive"):
        server.start(timeout_s=5.0)
    assert not server.is_running()


def test_taken_explicit_port_fails_fast(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = RedisServer(tmp_path / "data", port=port)
        with pytest.raises(RedisStartError, match="already in use"):
            server.start(timeout_s=5.0)
    assert not server.is_running()


def test_lost_free_port_is_replaced(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "data")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", server.port))  # taken between free_port() and the bind
        squatter.listen()
        lost_port = server.port
        with server:
            assert server.port != lost_port
            with redis.Redis.from_url(server.url) as client:
                assert client.ping()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    # A parent killed with SIGKILL runs no atexit hook: only the death signal stops Redis.
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from gateway.redis.server import RedisServer\n"
        "server = RedisServer(Path(sys.argv[1]))\n"
        "server.start()\n"
        "print(server.port, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        port = int(parent.stdout.readline())
        assert _accepts_connections(port)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5.0
    while _accepts_connections(port):
        assert time.monotonic() < deadline, "redis-server outlived its parent"
        time.sleep(0.02)


@pytest.mark.cluster
def test_cluster_covers_all_slots(redis_cluster: RedisCluster) -> None:
    nodes = redis_cluster.nodes
    assert len(nodes) == 6
    addresses = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
    assert redis_cluster.url == f"redis+cluster://{addresses}"
    roles = []
    for node in nodes:
        with redis.Redis.from_url(node.url) as client:
            info = client.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_slots_assigned"]) == CLUSTER_SLOTS
            assert int(info["cluster_known_nodes"]) == 6
            replication = client.info("replication")
            roles.append(replication["role"])
            if replication["role"] == "master":
                assert int(replication["connected_slaves"]) == 1
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3

    first = nodes[0]
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=first.port)
    try:
        keys = [f"{{p{partition:03d}}}:probe" for partition in range(64)]
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
        owners = {client.get_node_from_key(key).port for key in keys}
        assert owners == {redis_cluster.primary_for(key).port for key in keys}
        assert len(owners) == 3
    finally:
        client.close()
