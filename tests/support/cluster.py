"""A local Redis Cluster for tests: primaries, optionally one replica each, on free loopback
ports, every node with its AOF as gateway.redis.server configures it.

Invariants:

* Ready only when every node reports ``cluster_state:ok``, all 16384 slots are assigned,
  every node knows every other, and every replica's link to its primary is up (a replica
  still in its first sync cannot be promoted).
* ``node_timeout_ms`` is the cluster's ``cluster-node-timeout``: a primary unreachable that
  long is marked failed and its replica promoted. Replicas are promoted whatever their
  replication lag (``cluster-replica-validity-factor 0``): on loopback a replica is never
  far behind, and a test must not wait on Redis's data-age heuristics.
* Nodes keep their ports and cluster identity (``nodes.conf``) across ``kill`` and
  ``start``: a killed primary started again rejoins as a replica of the promoted one.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.crc import key_slot

from gateway.redis.server import (
    RedisServer,
    _probe_client,
    find_redis_cli,
)

__all__ = ["CLUSTER_SLOTS", "NODE_TIMEOUT_MS_DEFAULT", "RedisCluster"]

CLUSTER_SLOTS = 16384
NODE_TIMEOUT_MS_DEFAULT = 3000
_POLL_INTERVAL_MIN_SECONDS = 0.005
_POLL_INTERVAL_MAX_SECONDS = 0.1


class RedisCluster:
    """``primaries`` primaries and ``replicas`` replicas per primary, joined with
    ``redis-cli --cluster create ... --cluster-replicas R --cluster-yes``.

    ``data_dir`` must not hold a previous cluster (``start`` refuses node directories with a
    ``nodes.conf``). Nodes can be killed, stopped (SIGSTOP) and started again through
    :attr:`nodes`; :meth:`primary_for` says which one serves a key now.
    """

    def __init__(self, data_dir: Path, primaries: int = 3, replicas: int = 0,
                 node_timeout_ms: int = NODE_TIMEOUT_MS_DEFAULT) -> None:
        if primaries < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 primaries, got {primaries}")
        if replicas < 0:
            raise ValueError(f"replicas per primary must be >= 0, got {replicas}")
        self.data_dir = Path(data_dir).resolve()
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        extra = ["--cluster-node-timeout", str(node_timeout_ms),
                 "--cluster-replica-validity-factor", "0"]
        self._nodes = [
            RedisServer(self.data_dir / f"node-{index}", cluster=True,
                        name=f"cluster-node-{index}", extra_args=extra)
            for index in range(primaries * (1 + replicas))
        ]

    def __repr__(self) -> str:
        return f"<RedisCluster {self.url} dir={self.data_dir}>"

    @property
    def nodes(self) -> list[RedisServer]:
        """Every node; at creation the first ``primaries`` are the primaries."""
        return list(self._nodes)

    @property
    def url(self) -> str:
        addresses = ",".join(f"127.0.0.1:{node.port}" for node in self._nodes)
        return f"redis+cluster://{addresses}"

    def node_on(self, port: int) -> RedisServer:
        for node in self._nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster on port {port}")

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node, join them into one cluster and wait until it is ready.

        Raises:
            RuntimeError: if a node directory already holds a cluster, or the cluster
                does not form in time (every node is stopped again).
        """
        deadline = time.monotonic() + timeout_s
        for node in self._nodes:
            if (node.data_dir / "nodes.conf").exists():
                raise RuntimeError(f"{node.data_dir} already holds a cluster node (nodes.conf)")
        try:
            for node in self._nodes:
                node.start(timeout_s=max(deadline - time.monotonic(), 0.1))
            self._create(deadline)
            self.wait_ready(max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node; idempotent."""
        for node in self._nodes:
            node.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- topology ------------------------------------------------------------------------

    def primary_for(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now, as the running nodes agree on it."""
        slot = key_slot(key.encode())
        for node in self._nodes:
            if not node.is_running():
                continue
            try:
                with _probe_client(node.port) as client:
                    ranges = client.execute_command("CLUSTER SLOTS")
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            for start, end, primary, *_ in _slot_ranges(ranges):
                if start <= slot <= end:
                    return self.node_on(primary)
        raise RuntimeError(f"no running node knows who serves slot {slot}")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every node is up, agrees the cluster is ok with all slots served, and
        every replica's link to its primary is up."""
        deadline = time.monotonic() + timeout_s
        interval = _POLL_INTERVAL_MIN_SECONDS
        expected = len(self._nodes)
        last: dict[str, Any] = {}
        pending = list(self._nodes)
        while pending:
            node = pending[0]
            last = self._readiness(node)
            ok = (last.get("cluster_state") == "ok"
                  and int(last.get("cluster_slots_assigned", 0)) == CLUSTER_SLOTS
                  and int(last.get("cluster_known_nodes", 0)) == expected
                  and last.get("role") in ("master", "slave")
                  and (last.get("role") == "master" or last.get("master_link_status") == "up"))
            if ok:
                pending.pop(0)
                continue
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{node.name} is not ready in the cluster: {last}")
            time.sleep(interval)
            interval = min(interval * 2, _POLL_INTERVAL_MAX_SECONDS)
        primaries = sum(1 for n in self._nodes if self._readiness(n).get("role") == "master")
        if primaries != self.primaries:
            raise RuntimeError(f"{primaries} primaries, expected {self.primaries}")

    @staticmethod
    def _readiness(node: RedisServer) -> dict[str, Any]:
        if not node.is_running():
            return {"running": False}
        try:
            with _probe_client(node.port) as client:
                info: dict[str, Any] = dict(client.cluster("INFO"))
                info.update(client.info("replication"))
        except (redis.ConnectionError, redis.TimeoutError) as error:
            return {"error": repr(error)}
        return info

    def _create(self, deadline: float) -> None:
        command = [
            find_redis_cli(),
            "--cluster",
            "create",
            *(f"127.0.0.1:{node.port}" for node in self._nodes),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=max(deadline - time.monotonic(), 0.1),
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"redis-cli --cluster create timed out: {command}") from error
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed with code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )


def _slot_ranges(reply: Any) -> list[tuple[int, int, int]]:
    """(first slot, last slot, primary port) from CLUSTER SLOTS, raw or as redis-py parses it
    (a dict keyed by (first, last) with the primary under "primary")."""
    out: list[tuple[int, int, int]] = []
    if isinstance(reply, dict):
        for (start, end), value in reply.items():
            out.append((int(start), int(end), int(value["primary"][1])))
        return out
    for start, end, primary, *_ in reply:
        out.append((int(start), int(end), int(primary[1])))
    return out
