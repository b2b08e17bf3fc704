"""The ceiling: a minimal aiohttp JSON POST endpoint served exactly like the gateway.

Same event loop (uvloop), same runner settings (no access log, backlog 1024), same port
sharing for several workers (SO_REUSEPORT): the difference to the gateway is what the
gateway does per request. It answers any POST path with a small JSON document, so the
benchmark sends it byte-identical requests.

    python -m loadtest.hello --port 8090 [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import orjson
import uvloop
from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    answer = {"call_id": body.get("call_id"), "decision": "allow", "granted_seconds": 300}
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def serve(port: int, reuse_port: bool) -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"hello listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    if args.workers == 1:
        uvloop.run(serve(args.port, False))
        return
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(args.port, True))
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
