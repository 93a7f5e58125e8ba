#!/usr/bin/env python3
"""The 5,000-user concurrent-startup profile on its own reference platform, with the platform watched.

Starts a reference platform (``--redis-pool-size`` as given; ``--fast-password-hash``
so that registering thousands of users takes minutes, not an hour, on a shared
machine: the measured burst starts after every login), then runs
``suites/concurrent_agent_startup.robot`` against it with
``resources/env/load_5000.py``, while sampling the backend's ``/metrics``
(``runs_in_flight``, ``active_websockets``) and Redis ``connected_clients``.
Prints the suite's outcome, the load run's summary and the peaks.

    python bench/startup_burst.py                          # 5,000 users, Redis pool 1,000
    python bench/startup_burst.py --users 2000 --redis-pool-size 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import redis
from benchplatform import ROOT, BenchPlatform


def watch(state: dict, stop: threading.Event, peaks: dict) -> None:
    client = redis.Redis.from_url(state["redis_url"], socket_timeout=2)
    while not stop.wait(0.25):
        try:
            with urllib.request.urlopen(state["backend_url"] + "/metrics", timeout=2) as response:
                metrics = json.load(response)
            for key in ("runs_in_flight", "active_websockets"):
                peaks[key] = max(peaks.get(key, 0), int(metrics.get(key) or 0))
        except (OSError, ValueError):
            peaks["metrics_unanswered"] = peaks.get("metrics_unanswered", 0) + 1
        try:
            clients = int(client.info("clients")["connected_clients"])
            peaks["redis_connected_clients"] = max(peaks.get("redis_connected_clients", 0), clients)
        except redis.RedisError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--redis-pool-size", type=int, default=None,
                        help="backend Redis pool (default: the platform's)")
    parser.add_argument("--outputdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="crosstalk-burst-"))
    outputdir = args.outputdir or workdir / "robot"
    extra = ["--redis-pool-size", str(args.redis_pool_size)] if args.redis_pool_size else []
    with BenchPlatform(workdir, extra=extra) as state:
        env = dict(os.environ)
        for name, key in (("AUTH_URL", "auth_url"), ("BACKEND_URL", "backend_url"), ("WS_URL", "ws_url"),
                          ("AUTH_DATABASE_URL", "auth_database_url"),
                          ("BACKEND_DATABASE_URL", "backend_database_url"), ("REDIS_URL", "redis_url")):
            env[f"CROSSTALK_{name}"] = state[key]
        command = [sys.executable, "-m", "robot", "--outputdir", str(outputdir),
                   "--variablefile", "resources/env/external.py",
                   "--variablefile", "resources/env/load_5000.py",
                   "--variable", f"STARTUP_USERS:{args.users}",
                   "--variable", f"STARTUP_MIN_IN_FLIGHT:{args.users}",
                   "--variable", f"LOAD_RESULTS_DIR:{outputdir / 'load'}",
                   "suites/concurrent_agent_startup.robot"]
        print("+ " + " ".join(command), flush=True)
        peaks: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(state, stop, peaks), daemon=True)
        started = time.monotonic()
        watcher.start()
        code = subprocess.call(command, cwd=ROOT, env=env)
        stop.set()
        watcher.join(5)
    print(f"robot exit code {code} after {time.monotonic() - started:.0f} s; platform peaks {peaks}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for file in sorted((outputdir / "load").glob("*.json")):
        s = json.loads(file.read_text())
        lat = {k: {p: v.get(p) for p in ("p50_ms", "p95_ms", "p99_ms", "max_ms")}
               for k, v in s["latency"].items() if v.get("count")}
        keys = ("name", "users", "connected", "sent", "in_flight_peak", "completed", "success_rate_pct",
                "errors", "violations", "verdict", "latency_basis")
        print(json.dumps({k: s.get(k) for k in keys}))
        print(json.dumps(lat))
        print(json.dumps(s.get("resources")))
        print(json.dumps(s.get("info")))
    return code


if __name__ == "__main__":
    sys.exit(main())
