"""integrations/kamailio/callgate_client.py, the proxy's HTTP client to the gateway, outside
Kamailio: its `KSR` (Kamailio's module) is a stand-in holding the script variables, and the
gateway a plain HTTP/1.1 server on a loopback port that counts its connections and can
close them as a gateway does (keep-alive timeout, restart).

It must keep one connection per process, send authorize and end again on a new connection
when the kept one was closed under it, never send an extension twice, and answer status 0
(the proxy's "no answer") when the gateway cannot be asked."""

from __future__ import annotations

import importlib.util
import socket
import ssl
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loadtest.sip import KAMAILIO_DIR

ANSWER = b'{"decision":"allow","granted_seconds":300}'


@dataclass
class Server:
    """Answers every request 200 with ANSWER. ``close_after``: requests served on a
    connection before the server closes it (0: never)."""
    close_after: int = 0
    silent: bool = False  # reads requests, never answers
    tls: ssl.SSLContext | None = None
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    sock: socket.socket | None = None

    def start(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except OSError:
                    conn.close()
                    continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        served, data = 0, b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(data) < length:
                    data += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + data[:length])
                data = data[length:]
                if self.silent:
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
                served += 1
                if self.close_after and served >= self.close_after:
                    return

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()


class FakeKSR(types.ModuleType):
    """The part of Kamailio's KSR the client uses: $var() values and the log."""

    def __init__(self) -> None:
        super().__init__("KSR")
        self.vars: dict[str, Any] = {}
        self.logged: list[str] = []
        ksr = self

        class PV:
            @staticmethod
            def get(name: str) -> Any:
                return ksr.vars.get(name)

            @staticmethod
            def sets(name: str, value: str) -> None:
                ksr.vars[name] = value

            @staticmethod
            def seti(name: str, value: int) -> None:
                ksr.vars[name] = value

        self.pv = PV

    def err(self, text: str) -> None:
        self.logged.append(text)

    def warn(self, text: str) -> None:
        self.logged.append(text)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.start()
    yield s
    s.stop()


def load_client(monkeypatch: pytest.MonkeyPatch, port: int, *, scheme: str = "http",
                timeout_s: float = 5) -> tuple[Any, FakeKSR]:
    """A fresh copy of the client module with its own KSR, for a gateway on ``port``."""
    ksr = FakeKSR()
    monkeypatch.setitem(sys.modules, "KSR", ksr)
    monkeypatch.setenv("CALLGATE_URL", f"{scheme}://127.0.0.1:{port}")
    monkeypatch.setenv("CALLGATE_TIMEOUT", str(timeout_s))
    spec = importlib.util.spec_from_file_location(
        "callgate_client", KAMAILIO_DIR / "callgate_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    client = module.mod_init()
    client.child_init(1)
    return client, ksr


def post(client: Any, ksr: FakeKSR, path: str, retry: str) -> tuple[int, str]:
    ksr.vars.update({"$var(path)": path, "$var(body)": '{"call_id":"c1"}',
                     "$var(token)": "sw-secret"})
    assert client.post(None, retry) == 1
    return ksr.vars["$var(status)"], ksr.vars["$var(answer)"]


def test_one_connection_carries_every_request(server: Server,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    client, ksr = load_client(monkeypatch, server.port)
    for n in range(5):
        assert post(client, ksr, f"/v1/tenants/t/calls/c{n}/end", "1") == (200,
                                                                          ANSWER.decode())
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /v1/tenants/t/calls/c0/end HTTP/1.1\r\n")
    assert "Authorization: Bearer sw-secret" in head
    assert "Content-Type: application/json" in head


def test_a_closed_connection_is_replaced_and_authorize_sent_again(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway closes each connection after one answer (as a restart, or its keep-alive
    timeout, would): the next request finds the kept connection closed and is sent again,
    once, on a new one."""
    server.close_after = 1
    client, ksr = load_client(monkeypatch, server.port)
    assert post(client, ksr, "/v1/tenants/t/calls", "1")[0] == 200
    assert post(client, ksr, "/v1/tenants/t/calls", "1")[0] == 200
    assert server.connections == 2
    assert len(server.requests) == 2


def test_an_extension_is_never_sent_twice(server: Server,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server.close_after = 1
    client, ksr = load_client(monkeypatch, server.port)
    assert post(client, ksr, "/v1/tenants/t/calls", "1")[0] == 200
    status, answer = post(client, ksr, "/v1/tenants/t/calls/c1/extend", "0")
    assert (status, answer) == (0, "")  # the call keeps its grant
    assert len(server.requests) == 1
    assert any("not sent again" in line for line in ksr.logged)
    # The next request goes out on a new connection.
    assert post(client, ksr, "/v1/tenants/t/calls/c1/end", "1")[0] == 200
    assert server.connections == 2


def test_a_connection_idle_too_long_is_not_reused(server: Server,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    client, ksr = load_client(monkeypatch, server.port)
    assert post(client, ksr, "/v1/tenants/t/calls", "1")[0] == 200
    idle_max = type(client).__init__.__globals__["IDLE_SECONDS_MAX"]
    client.used_at -= idle_max + 1  # as if idle that long
    assert post(client, ksr, "/v1/tenants/t/calls", "1")[0] == 200
    assert server.connections == 2


def test_no_gateway_answers_status_0_and_logs_no_token(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client, ksr = load_client(monkeypatch, port)
    assert post(client, ksr, "/v1/tenants/t/calls", "1") == (0, "")
    assert ksr.logged and not any("sw-secret" in line for line in ksr.logged)


def test_a_gateway_that_does_not_answer_is_status_0(server: Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    server.silent = True
    client, ksr = load_client(monkeypatch, server.port, timeout_s=0.2)
    assert post(client, ksr, "/v1/tenants/t/calls", "1") == (0, "")
    assert len(server.requests) == 1  # a timeout is not a closed connection: not resent
    server.silent = False
    assert post(client, ksr, "/v1/tenants/t/calls", "1")[0] == 200  # on a new connection
    assert server.connections == 2


def test_https(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An https:// gateway URL: TLS, with the certificate checked against the system's
    trust store (here SSL_CERT_FILE, the test's own certificate for 127.0.0.1)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    client, ksr = load_client(monkeypatch, server.port, scheme="https")
    for _ in range(3):
        assert post(client, ksr, "/v1/tenants/t/calls", "1") == (200, ANSWER.decode())
    assert server.connections == 1
