#!/usr/bin/env python3
"""Locust's distributed runner driving Crosstalk users: 1 master + N workers on loopback.

Runs the same short load twice: against a clean reference platform (expect:
merged statistics from every worker, zero violations, exit code 0) and against
one with the ``crosstalk`` fault planted (expect: isolation violations reported
by the workers as failures, the master's exit code 1).

    python bench/locust_distributed.py                       # 2 workers, 40 users, 15 s per run
    python bench/locust_distributed.py --workers 2 --users 100 --run-time 30

Prints the master's verdict line (``CROSSTALK {...}``) and its exit code per run;
exits non-zero when a run did not end the way it should.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchplatform import ROOT, BenchPlatform

LOCUSTFILE = ROOT / "bench" / "locust_crosstalk.py"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_run(state: dict, workers: int, users: int, run_time: int, workdir: Path,
                    p95_ms: float = 0.0) -> dict:
    """One master and ``workers`` workers; returns the master's exit code, verdict line and workers' codes."""
    port = free_port()
    target = ["--crosstalk-auth-url", state["auth_url"], "--crosstalk-ws-url", state["ws_url"],
              "--crosstalk-pacing", "0.5", "--crosstalk-timeout", "20", "--crosstalk-p95-ms", str(p95_ms)]
    master_cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--master", "--headless",
                  "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                  "--expect-workers", str(workers), "--expect-workers-max-wait", "60",
                  "-u", str(users), "-r", str(users), "--run-time", f"{run_time}s", "--only-summary",
                  "--stop-timeout", "25", *target]
    worker_cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
                  "--master-host", "127.0.0.1", "--master-port", str(port), *target]
    master = subprocess.Popen(master_cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    time.sleep(1.0)
    procs = [subprocess.Popen(worker_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(workers)]
    try:
        output, _ = master.communicate(timeout=run_time + 180)
    except subprocess.TimeoutExpired:
        master.kill()
        output, _ = master.communicate()
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(60))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    (workdir / f"master-{int(time.time())}.log").write_text(output)
    verdict = next((json.loads(line.split("CROSSTALK ", 1)[1]) for line in output.splitlines()
                    if "CROSSTALK {" in line), None)
    workers_seen = next((line.strip() for line in output.splitlines() if "workers connected" in line
                         or "All users spawned" in line), "")
    return {"exit_code": master.returncode, "verdict": verdict, "worker_exit_codes": codes,
            "spawned": workers_seen, "output_tail": output.splitlines()[-25:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--run-time", type=int, default=15, help="seconds per run")
    parser.add_argument("--p95-ms", type=float, default=0.0, help="SLA the master enforces (0: none)")
    parser.add_argument("--skip-fault", action="store_true", help="only the clean run")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="crosstalk-locust-"))
    ok = True
    for faults in ([], ["crosstalk"])[: 1 if args.skip_fault else 2]:
        name = ",".join(faults) or "clean"
        with BenchPlatform(workdir, faults) as state:
            result = distributed_run(state, args.workers, args.users, args.run_time, workdir, args.p95_ms)
        expected = 1 if faults else 0
        good = result["exit_code"] == expected and result["verdict"] is not None
        ok &= good
        print(f"[{name}] master exit code {result['exit_code']} (expected {expected}), "
              f"workers {result['worker_exit_codes']}: {json.dumps(result['verdict'])}")
        print("\n".join("    " + line for line in result["output_tail"] if "|" in line or "users" in line))
    print(f"logs: {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
