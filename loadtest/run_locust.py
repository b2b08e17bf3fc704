"""``make loadtest``: a short headless Locust session against a local gateway.

Starts ``callgate serve`` (its own embedded Redis in a scratch data directory, a fresh
operator token), runs loadtest/locustfile.py with ``--headless -u 50 -r 10 -t 20s`` and
prints Locust's summary; the exit status is Locust's (non-zero on any failed request).

    python -m loadtest.run_locust [-u 50] [-r 10] [-t 20s] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from loadtest.common import BIN, RESULTS, ROOT, gateway, new_token, scratch_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-u", "--users", type=int, default=50, help="simulated switches")
    p.add_argument("-r", "--spawn-rate", type=int, default=10)
    p.add_argument("-t", "--run-time", default="20s")
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    args = p.parse_args(argv)
    token = new_token()
    work = scratch_dir("locust")
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        with gateway(work, None, token, workers=args.workers) as gw:
            env = {**os.environ, "CALLGATE_OPERATOR_TOKEN": token}
            cmd = [str(BIN / "locust"), "-f", str(ROOT / "loadtest" / "locustfile.py"),
                   "--headless", "-u", str(args.users), "-r", str(args.spawn_rate),
                   "-t", args.run_time, "--host", gw.base, "--only-summary",
                   "--csv", str(RESULTS / "locust"), "--loglevel", "WARNING"]
            print("$", " ".join(cmd), flush=True)
            return subprocess.run(cmd, env=env, cwd=ROOT).returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
