#!/usr/bin/env python3
"""Soak memory: does the load generator's memory grow with messages, or only with users?

Registers ``--users`` users on a reference platform, then drives ``--messages``
messages per user with ``crosstalk.load.run_load`` (closed model, a new thread
every ``--messages-per-thread`` messages because the reference agent quotes a
thread's whole history) while a thread samples this process's resident memory
every second.  Prints the memory once every user is connected, at 10 %, 50 %
and 100 % of the messages, the peak, the growth per 1,000 messages between 10 %
and 100 %, and whether the peak stayed within ``--budget-mb``.

    python bench/soak_memory.py --users 1000 --messages 1000     # the issue's soak (hours here)
    python bench/soak_memory.py --users 1000 --messages 100      # what fits in minutes
    python bench/soak_memory.py --users 100 --messages 100 --keep-frames 1000000   # keep every frame

The budget (default: 60 MB + 250 KB per user) is for the generator process:
Python, the websockets connections, each user's bounded frame tail
(``--keep-frames``, 64 by default) and histograms; it does not depend on the
number of messages.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from benchplatform import BenchPlatform, as_test_users, create_users


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100, help="messages per user")
    parser.add_argument("--messages-per-thread", type=int, default=20)
    parser.add_argument("--keep-frames", type=int, default=64, help="frames kept per user (the tail)")
    parser.add_argument("--budget-mb", type=float, default=None,
                        help="peak resident memory allowed (default 60 MB + 0.25 MB per user)")
    parser.add_argument("--state-file", type=Path, help="attach to a running platform's state file")
    args = parser.parse_args()
    budget = args.budget_mb or 60 + 0.25 * args.users
    from crosstalk.engine import get_engine
    from crosstalk.load import LoadConfig, LoadRun, run_load
    from crosstalk.metrics import LoadMetrics

    me = psutil.Process()
    with BenchPlatform(Path(tempfile.mkdtemp(prefix="crosstalk-soak-")), state_file=args.state_file) as state:
        started = time.monotonic()
        users = as_test_users(create_users(state["auth_url"], args.users, "soak"))
        print(f"{args.users} users registered in {time.monotonic() - started:.0f} s; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        config = LoadConfig(users=args.users, messages=args.messages, message_timeout=120.0, name="soak",
                            keep_frames=args.keep_frames, messages_per_thread=args.messages_per_thread)
        run = LoadRun(config, LoadMetrics("soak"))
        total = args.users * args.messages
        samples: list[tuple[float, int, int]] = []  # (seconds, completed, rss)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                samples.append((time.monotonic(), run.metrics.completed + run.metrics.error_count,
                                me.memory_info().rss))

        marks: dict[str, int] = {}
        run.on_phase = lambda phase: marks.setdefault(phase, me.memory_info().rss)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.monotonic()
        get_engine().run(run_load(config, state["auth_url"], state["ws_url"], users=users, run=run),
                         total / 5 + 600)
        stop.set()
        sampler.join(5)
        wall = time.monotonic() - began
        m = run.metrics
        get_engine().run(run.close(), 120)

    def rss_at(fraction: float) -> int | None:
        wanted = fraction * total
        return next((rss for _, done, rss in samples if done >= wanted), samples[-1][2] if samples else None)

    mb = 1024 * 1024
    connected = marks.get("sending")
    r10, r50, r100 = rss_at(0.10), rss_at(0.5), rss_at(1.0)
    peak = max([rss for _, _, rss in samples] + [connected or 0])
    growth = ((r100 - r10) / mb) / (0.9 * total / 1000) if r10 and r100 and total >= 1000 else None
    print(f"{args.users} users x {args.messages} messages = {total} messages in {wall:.0f} s "
          f"({m.completed} completed, errors {dict(m.errors) or 0}, violations {dict(m.violations) or 0}); "
          f"frames kept per user: {args.keep_frames}")
    print(f"generator RSS: connected {connected / mb:.0f} MB, at 10 % {r10 / mb:.0f} MB, at 50 % "
          f"{r50 / mb:.0f} MB, at 100 % {r100 / mb:.0f} MB, peak {peak / mb:.0f} MB")
    print(f"garbage collections while sending: {m.info.get('gc_collections')}, longest pause "
          f"{m.info.get('gc_max_pause_ms')} ms; cyclic garbage found after the run: "
          f"{m.info.get('gc_cyclic_garbage')} ({m.info.get('gc_mode')})")
    for kind, example in m.error_examples.items():
        print(f"first {kind}: {example}")
    if growth is not None:
        print(f"growth between 10 % and 100 %: {growth * 1024:.1f} KB per 1,000 messages")
    verdict = "within" if peak / mb <= budget else "OVER"
    print(f"budget {budget:.0f} MB (60 MB + 0.25 MB per user): peak {verdict} budget; "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0 if peak / mb <= budget and m.completed == total else 1


if __name__ == "__main__":
    sys.exit(main())
