"""A minimal HTTP/1.1 client over asyncio streams, for the fault scenarios: thousands of
keep-alive connections opened at once, a request written on each, answers read with a
deadline. Cheaper per connection than a client library, and it says exactly what came back:
a status and a body, or the exception that stood for the answer."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson


class HttpError(Exception):
    """The server closed the connection or sent something that is not an HTTP answer."""


class HttpConn:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str, headers: dict[str, str]) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    @classmethod
    async def open(cls, host: str, port: int, headers: dict[str, str],
                   timeout_s: float) -> HttpConn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        return cls(reader, writer, f"{host}:{port}", headers)

    def send(self, method: str, path: str, body: Any = None) -> None:
        """Write one request (no wait: the answer is read by :meth:`receive`)."""
        data = b"" if body is None else orjson.dumps(body)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n{self._headers}"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        self._writer.write(head.encode() + data)

    async def receive(self) -> tuple[int, Any]:
        """(status, parsed JSON body or None); HttpError if the connection ends first."""
        line = await self._reader.readline()
        if not line:
            raise HttpError("connection closed before an answer")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP status line: {line[:80]!r}")
        status = int(parts[1])
        length = 0
        chunked = False
        while True:
            header = await self._reader.readline()
            if not header:
                raise HttpError("connection closed inside the answer's head")
            if header in (b"\r\n", b"\n"):
                break
            name, _, value = header.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value.strip())
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        data = await self._read_chunked() if chunked else await self._reader.readexactly(length)
        try:
            return status, orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return status, data.decode(errors="replace")

    async def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int((await self._reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await self._reader.readline()
                return bytes(out)
            out += await self._reader.readexactly(size)
            await self._reader.readexactly(2)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        self.send(method, path, body)
        return await self.receive()

    def close(self) -> None:
        self._writer.close()
