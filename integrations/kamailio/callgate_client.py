"""The proxy's HTTP client to callgate: one keep-alive connection per Kamailio process.

Loaded by kamailio.cfg through app_python3 (Debian's kamailio-python3-modules) and run with
Kamailio's own Python 3, standard library only. Kamailio 5.6's `http_client_query()`
opens and closes a TCP connection for every request, since only a named `httpcon` keeps
one, and a named connection cannot carry the switch's bearer token. The gateway then pays
an accept, a set-up and a close per request (what that costs: docs/kamailio.md). Here
each async worker keeps its own connection, made at its first request, and reuses it.

Called as `python_exec("post", "<retry>")` with `$var(path)`, `$var(body)` and
`$var(token)` set; sets `$var(status)` (the HTTP status, or 0 when the gateway could not be
asked or did not answer) and `$var(answer)` (the body). The token is sent, never logged.

The gateway closes a connection idle for its keep-alive timeout (75 s): one idle for
IDLE_SECONDS_MAX is replaced before the request, so that a request does not meet a
connection being closed. A request that
fails on a reused connection, before any byte of an answer came back, is sent once more
on a new connection when the caller passes "retry" ("1"): authorize and end, which the
gateway answers the same when asked twice (D31, D32). An extension is never sent twice:
on such a failure the call keeps its current grant, as when the gateway does not answer.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import urllib.parse

import KSR  # type: ignore[import-not-found]  # Kamailio's module, inside Kamailio only

# Below the gateway's keep-alive timeout (75 s), so that a kept connection is never one
# the gateway is closing.
IDLE_SECONDS_MAX = 30.0
# Larger answers are not the gateway's (its documents are a few hundred bytes).
ANSWER_BYTES_MAX = 65536


class Stale(Exception):
    """The kept connection failed before any byte of an answer came back."""


class Client:
    """HTTP/1.1 over one socket: the request in one write, the answer read up to its
    Content-Length. (Not http.client: its header parsing, through the email package, is
    dear in Kamailio's per-call CPU.)"""

    def __init__(self) -> None:
        url = urllib.parse.urlsplit(os.environ["CALLGATE_URL"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("CALLGATE_URL must be http(s)://host[:port][/base]")
        self.tls = ssl.create_default_context() if url.scheme == "https" else None
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.base = url.path.rstrip("/")
        self.host_header = url.netloc.rsplit("@", 1)[-1]
        self.timeout_s = float(os.environ["CALLGATE_TIMEOUT"])
        self.sock: socket.socket | ssl.SSLSocket | None = None
        self.used_at = 0.0

    def child_init(self, rank: int) -> int:
        # Nothing is inherited across fork: each process makes its own connection.
        self.sock = None
        return 0

    def _connect(self) -> tuple[socket.socket | ssl.SSLSocket, bool]:
        """The kept connection and True, or a new one and False."""
        if self.sock is not None and time.monotonic() - self.used_at < IDLE_SECONDS_MAX:
            return self.sock, True
        self._drop()
        sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (self.host, self.port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock
        return sock, False

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _exchange(self, path: str, body: bytes, token: str) -> tuple[int, str]:
        """One request on the kept or a new connection. Raises Stale when a kept connection
        failed before any byte of the answer; OSError / ValueError for the rest."""
        sock, reused = self._connect()
        head = (f"POST {self.base}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                f"Content-Type: application/json\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            sock.sendall(head + body)
            data = sock.recv(ANSWER_BYTES_MAX)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            self._drop()
            if reused:
                raise Stale from exc
            raise
        if not data:
            self._drop()
            if reused:
                raise Stale
            raise ConnectionError("the gateway closed the connection without an answer")
        while b"\r\n\r\n" not in data:
            more = sock.recv(ANSWER_BYTES_MAX)
            if not more or len(data) > ANSWER_BYTES_MAX:
                raise ConnectionError("incomplete answer head")
            data += more
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = -1, lines[0].startswith("HTTP/1.0")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
            elif name == "transfer-encoding":
                raise ValueError("chunked answers are not expected from the gateway")
        if length < 0:  # no length: the answer runs to the connection's end
            close = True
            while (more := sock.recv(ANSWER_BYTES_MAX)) and len(rest) < ANSWER_BYTES_MAX:
                rest += more
        while len(rest) < length:
            more = sock.recv(ANSWER_BYTES_MAX)
            if not more:
                raise ConnectionError("the answer was cut short")
            rest += more
        self.used_at = time.monotonic()
        if close:
            self._drop()
        return status, rest[:length if length >= 0 else None].decode("utf-8", "replace")

    def _ask(self, path: str, body: bytes, token: str, retry: bool) -> tuple[int, str]:
        try:
            try:
                return self._exchange(path, body, token)
            except Stale:
                # The gateway closed the kept connection as the request went out.
                if not retry:
                    KSR.warn(f"callgate: connection lost on {path}, not sent again\n")
                    return 0, ""
                return self._exchange(path, body, token)
        except (OSError, ValueError, IndexError, Stale) as exc:
            self._drop()
            KSR.err(f"callgate: {self.host}:{self.port}{self.base}{path}: {exc!r}\n")
            return 0, ""

    def post(self, msg: object, retry: str = "") -> int:
        status, answer = self._ask(KSR.pv.get("$var(path)"),
                                   KSR.pv.get("$var(body)").encode(),
                                   KSR.pv.get("$var(token)") or "", retry == "1")
        KSR.pv.seti("$var(status)", status)
        KSR.pv.sets("$var(answer)", answer)
        return 1


def mod_init() -> Client:
    return Client()
