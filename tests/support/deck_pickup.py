"""Measures how soon a second `callgate serve` process rates with an uploaded deck.

Run: ``.venv/bin/python -m tests.support.deck_pickup`` (the README figures). Two gateways on one
redis-server of their own; a 50-row and a 100,000-row deck are PUT to the first, and the
second is polled until its lookup answers 200.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from gateway.redis.server import RedisServer
from tests.test_decks import make_deck_csv

PORTS = (18461, 18462)
TOKEN = "measure-token-Kd83nQ0vLx5e"  # 25 characters: >= 128 bits
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _wait_up(port: int) -> None:
    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"gateway on {port} did not start")


def main() -> None:
    server = RedisServer(Path(tempfile.mkdtemp()), name="deck-pickup-redis")
    server.start()
    env = {**os.environ, "CALLGATE_REDIS_URL": server.url,
           "CALLGATE_OPERATOR_TOKEN": TOKEN, "CALLGATE_WORKERS": "1",
           "CALLGATE_LOG_LEVEL": "WARNING"}
    callgate = str(Path(sys.executable).parent / "callgate")
    procs = [subprocess.Popen([callgate, "serve", "--port", str(p)], env=env) for p in PORTS]
    try:
        for port in PORTS:
            _wait_up(port)
        for rows, currency in ((50, "XTA"), (100_000, "XTB")):
            body = make_deck_csv(rows).encode()
            t0 = time.perf_counter()
            resp = requests.put(f"http://127.0.0.1:{PORTS[0]}/v1/rate-decks/{currency}",
                                data=body, headers={**HEADERS, "Content-Type": "text/csv"},
                                timeout=30)
            t1 = time.perf_counter()
            url = f"http://127.0.0.1:{PORTS[1]}/v1/rate-decks/{currency}/lookup?number=%2B1000001"
            while requests.get(url, headers=HEADERS, timeout=5).status_code != 200:
                time.sleep(0.005)
            t2 = time.perf_counter()
            print(f"{rows} rows: PUT {resp.status_code} answered in {t1 - t0:.2f} s; "
                  f"the other worker rates with it {t2 - t1:.2f} s later")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        server.stop()


if __name__ == "__main__":
    main()
