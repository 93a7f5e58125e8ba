#!/usr/bin/env python3
"""Does a 1-second platform stall show in the p95?  Closed model (raw and corrected) and open model.

Starts a reference platform, then runs each load scenario twice with
``crosstalk.load.run_load``: once undisturbed and once with the backend process
paused for ``--stall`` seconds (SIGSTOP ... SIGCONT on its pid) a moment after
the messages start.  Prints p95/p99 per scenario before and after:

* closed, uncorrected - latency from the send (what a closed loop sees: one
  slow sample per user, the stall hides);
* closed, corrected   - the same run after HdrHistogram's expected-interval
  correction (what the suites report for the closed model);
* open                - latency from each message's intended send time at a
  fixed arrival rate (no correction needed).

    python bench/stall_experiment.py                     # 20 users, 1 s stall
    python bench/stall_experiment.py --users 50 --stall 2
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchplatform import BenchPlatform


def pause(pid: int, after: float, seconds: float) -> threading.Thread:
    def stall() -> None:
        time.sleep(after)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=stall, daemon=True)
    return thread


def scenario(state: dict, users: list, model: str, messages: int, rate: float, stall: float) -> dict:
    from crosstalk.engine import get_engine
    from crosstalk.load import LoadConfig, LoadModel, LoadRun, run_load
    from crosstalk.metrics import LoadMetrics

    config = LoadConfig(users=len(users), messages=messages, model=LoadModel(model), rate=rate,
                        message_timeout=30.0, name=f"{model} stall {stall:g}s")
    run = LoadRun(config, LoadMetrics(config.name))
    stopper = pause(state["pids"]["backend"], 1.0, stall) if stall else None
    run.on_phase = lambda phase: stopper.start() if stopper and phase == "sending" else None
    engine = get_engine()
    engine.run(run_load(config, state["auth_url"], state["ws_url"], users=users, run=run), 600)
    if stopper:
        stopper.join(stall + 5)
    engine.run(run.close(), 60)
    m = run.metrics
    row = {"completed": m.completed, "errors": m.error_count, "basis": m.latency_basis}
    for key in ("completion", "completion_uncorrected"):
        if key in m.histograms:
            row[key] = (m.stat(key, "p95"), m.stat(key, "p99"))  # what a threshold reads
    return row


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1e3:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--messages", type=int, default=30, help="messages per user (closed model)")
    parser.add_argument("--rate", type=float, default=80.0, help="open model: messages per second")
    parser.add_argument("--seconds", type=float, default=6.0, help="open model: length of the run")
    parser.add_argument("--stall", type=float, default=1.0, help="seconds the backend is paused")
    args = parser.parse_args()
    from crosstalk.load import new_load_users, register_and_login

    with BenchPlatform(Path(tempfile.mkdtemp(prefix="crosstalk-stall-"))) as state:
        users = new_load_users(args.users, "stall")
        for user in users:
            register_and_login(state["auth_url"], user)
        open_messages = max(1, round(args.rate * args.seconds / args.users))
        rows = []
        for model, messages in (("closed", args.messages), ("open", open_messages)):
            for stall in (0.0, args.stall):
                result = scenario(state, users, model, messages, args.rate, stall)
                rows.append((model, stall, result))
                print(f"{model:6} stall {stall:g} s: {result}", flush=True)
    print(f"\nbackend paused {args.stall:g} s (SIGSTOP/SIGCONT) 1 s after the first message; "
          f"{args.users} users; load average {os.getloadavg()[0]:.1f}")
    print(f"{'scenario':34} {'p95 before':>11} {'p95 stalled':>12} {'p99 before':>11} {'p99 stalled':>12}")
    lines = [("closed model, uncorrected (send)", "closed", "completion_uncorrected"),
             ("closed model, corrected (reported)", "closed", "completion"),
             ("open model, intended time (reported)", "open", "completion")]
    for title, model, key in lines:
        before = next(r for m, s, r in rows if m == model and not s).get(key, (None, None))
        after = next(r for m, s, r in rows if m == model and s).get(key, (None, None))
        print(f"{title:34} {ms(before[0]):>11} {ms(after[0]):>12} {ms(before[1]):>11} {ms(after[1]):>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
