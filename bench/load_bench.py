#!/usr/bin/env python3
"""Load generator benchmark: Crosstalk's driver against a bare websockets loop and Locust.

One run, one reference platform, one chat scenario: N users (already logged
in, the same users for every generator), one WebSocket each, M messages each
in a closed loop (send, wait for the run's ``agent_completed``, send the next).
Each generator runs in its own process, so its CPU is its own; it reports
messages/s, latency percentiles (send -> agent_completed, HDR histogram) and
the CPU seconds its process used per 1,000 messages.

    python bench/load_bench.py                     # 100 users x 20 messages, own platform
    python bench/load_bench.py --users 1000 --messages 3 --only crosstalk   # hold 1,000 users
    python bench/load_bench.py --state-file results/.platform/default/state.json   # attach

* crosstalk - ``crosstalk.load.run_load`` on the engine loop (what the suites use)
* bare      - the floor: plain ``websockets`` client coroutines, json, nothing else
* locust    - Locust (gevent) with websocket-client inside a ``User``, reporting
              through Locust's ``events.request`` API, run headless via its library API

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "libraries"))

GENERATORS = ("crosstalk", "bare", "locust")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def histogram():
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, 3_600_000_000, 3)


def result_line(name: str, users: int, completed: int, errors: int, wall: float, cpu: float, h) -> dict:
    pct = (lambda p: h.get_value_at_percentile(p) / 1e3) if h.get_total_count() else (lambda p: None)
    return {
        "generator": name, "users": users, "completed": completed, "errors": errors,
        "wall_s": round(wall, 3), "msgs_per_s": round(completed / wall, 1) if wall else None,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "cpu_s": round(cpu, 3), "cpu_s_per_1000": round(1000 * cpu / completed, 3) if completed else None,
    }


def message(cmid: str, n: int, thread_id: str | None) -> str:
    body = {"type": "user_message", "content": f"benchmark message {n} [{cmid}]", "client_message_id": cmid}
    if thread_id:
        body["thread_id"] = thread_id
    return json.dumps(body)


# ------------------------------------------------------------------ generators (child processes)
def run_crosstalk(users: list[dict], ws_url: str, messages: int, timeout: float) -> dict:
    from crosstalk.engine import get_engine
    from crosstalk.load import LoadConfig, run_load
    from crosstalk.model import TestUser, Tokens

    test_users = []
    for index, u in enumerate(users):
        user = TestUser(label=f"b{index}", email=u["email"], password="x" * 12,
                        canary=f"CANARY-b{index}-{uuid.uuid4().hex[:8]}", user_id=u["user_id"])
        user.tokens = Tokens(u["token"], "")
        test_users.append(user)
    config = LoadConfig(users=len(users), messages=messages, message_timeout=timeout, name="bench")
    engine = get_engine()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    run = engine.run(run_load(config, "", ws_url, users=test_users), timeout * messages + 120)
    wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
    m = run.metrics
    engine.run(run.close(), 60)
    return result_line("crosstalk", len(users), m.completed, m.error_count, wall, cpu,
                       m.histograms["completion"])


def run_bare(users: list[dict], ws_url: str, messages: int, timeout: float) -> dict:
    import asyncio

    from websockets.asyncio.client import connect

    h = histogram()
    done = {"completed": 0, "errors": 0}

    async def user_loop(u: dict, index: int, go: asyncio.Event) -> None:
        ws = await connect(ws_url, additional_headers={"Authorization": f"Bearer {u['token']}"},
                           compression=None, ping_interval=None, open_timeout=30)
        try:
            await go.wait()
            thread_id = None
            for n in range(messages):
                cmid = f"bare-{index}-{n}"
                sent = time.monotonic()
                await ws.send(message(cmid, n, thread_id))
                while True:
                    data = json.loads(await asyncio.wait_for(ws.recv(), timeout))
                    if data.get("client_message_id") != cmid:
                        continue
                    kind = data.get("type")
                    if kind == "agent_completed":
                        h.record_value(max(1, int((time.monotonic() - sent) * 1e6)))
                        done["completed"] += 1
                        thread_id = data.get("thread_id")
                        break
                    if kind in ("agent_error", "error"):
                        done["errors"] += 1
                        break
        finally:
            await ws.close()

    async def main() -> float:
        go = asyncio.Event()
        tasks = [asyncio.ensure_future(user_loop(u, i, go)) for i, u in enumerate(users)]
        await asyncio.sleep(0)
        go.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        done["errors"] += sum(isinstance(r, BaseException) for r in results)
        return 0.0

    cpu0, wall0 = cpu_seconds(), time.monotonic()
    asyncio.run(main())
    wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
    return result_line("bare", len(users), done["completed"], done["errors"], wall, cpu, h)


def run_locust(users: list[dict], ws_url: str, messages: int, timeout: float) -> dict:
    import gevent
    import websocket
    from locust import User, events, task
    from locust.env import Environment
    from locust.exception import StopUser

    h = histogram()
    queue = list(users)
    state = {"completed": 0, "errors": 0, "finished": 0, "cpu0": None, "wall0": None}

    @events.request.add_listener
    def on_request(response_time, exception, **_kw):  # the same numbers Locust's own stats get
        if exception is None:
            h.record_value(max(1, int(response_time * 1000)))
            state["completed"] += 1
        else:
            state["errors"] += 1

    class ChatUser(User):
        wait_time = staticmethod(lambda: 0)

        def on_start(self) -> None:
            self.creds = queue.pop()
            self.ws = websocket.create_connection(
                ws_url, header=[f"Authorization: Bearer {self.creds['token']}"], timeout=timeout,
                enable_multithread=False, suppress_origin=True,
            )
            self.sent = 0
            self.thread_id = None

        @task
        def chat(self) -> None:
            if self.sent >= messages:
                self.ws.close()
                state["finished"] += 1
                raise StopUser()
            cmid = f"locust-{id(self)}-{self.sent}"
            self.sent += 1
            started = time.perf_counter()
            self.ws.send(message(cmid, self.sent, self.thread_id))
            error = None
            while True:
                data = json.loads(self.ws.recv())
                if data.get("client_message_id") != cmid:
                    continue
                if data.get("type") == "agent_completed":
                    self.thread_id = data.get("thread_id")
                    break
                if data.get("type") in ("agent_error", "error"):
                    error = RuntimeError(str(data)[:200])
                    break
            elapsed_ms = (time.perf_counter() - started) * 1000
            events.request.fire(request_type="WS", name="chat message", response_time=elapsed_ms,
                                response_length=0, exception=error, context={})

    env = Environment(user_classes=[ChatUser], events=events)
    runner = env.create_local_runner()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    runner.start(len(users), spawn_rate=len(users))
    deadline = time.monotonic() + timeout * messages + 120
    while state["finished"] < len(users) and time.monotonic() < deadline:
        if state["completed"] + state["errors"] >= len(users) * messages:
            break
        gevent.sleep(0.05)
    wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
    runner.quit()
    return result_line("locust", len(users), state["completed"], state["errors"], wall, cpu, h)


# ------------------------------------------------------------------ orchestration
def start_platform(workdir: Path) -> tuple[subprocess.Popen, dict]:
    state_file = workdir / "state.json"
    log = open(workdir / "platform.log", "w")  # noqa: SIM115 - lives as long as the platform
    process = subprocess.Popen(
        [sys.executable, "-m", "reference_platform", "--auth-port", "0", "--backend-port", "0",
         "--state-file", str(state_file), "--rate-limit", "100000", "--rate-burst", "100000"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if state_file.exists():
            try:
                return process, json.loads(state_file.read_text())
            except ValueError:
                pass
        if process.poll() is not None:
            raise SystemExit(f"The reference platform did not start: see {workdir / 'platform.log'}")
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("The reference platform did not write its state file within 120 s.")


def create_users(auth_url: str, count: int) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    from crosstalk.load import new_load_users, register_and_login

    users = new_load_users(count, "bench")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda u: register_and_login(auth_url, u), users))
    return [{"email": u.email, "user_id": u.user_id, "token": u.access_token} for u in users]


def child(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.child).read_text())
    if spec["generator"] != "locust":
        # read by crosstalk.engine when it creates its loop (the bare loop follows the same policy)
        os.environ["CROSSTALK_LOOP"] = spec.get("loop", "uvloop")
        if spec.get("loop") == "uvloop":
            import asyncio

            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    runner = {"crosstalk": run_crosstalk, "bare": run_bare, "locust": run_locust}[spec["generator"]]
    result = runner(spec["users"], spec["ws_url"], spec["messages"], spec["timeout"])
    print("RESULT " + json.dumps(result), flush=True)


def run_child(generator: str, users: list[dict], ws_url: str, messages: int, timeout: float,
              workdir: Path, loop: str = "asyncio") -> dict:
    spec_file = workdir / f"{generator}.json"
    spec_file.write_text(json.dumps({"generator": generator, "users": users, "ws_url": ws_url,
                                     "messages": messages, "timeout": timeout, "loop": loop}))
    completed = subprocess.run(
        [sys.executable, __file__, "--child", str(spec_file)], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout * messages + 300,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
    return {"generator": generator, "error": " | ".join(tail) or f"exit code {completed.returncode}"}


def print_table(results: list[dict]) -> None:
    columns = ("generator", "users", "completed", "errors", "msgs_per_s", "p50_ms", "p95_ms", "p99_ms",
               "cpu_s", "cpu_s_per_1000")
    print("  ".join(f"{c:>14}" for c in columns))
    for r in results:
        if "error" in r:
            print(f"{r['generator']:>14}  FAILED: {r['error']}")
            continue
        print("  ".join(f"{'' if r.get(c) is None else r.get(c):>14}" for c in columns))
    by_name = {r["generator"]: r for r in results if r.get("cpu_s_per_1000")}
    ours = by_name.get("crosstalk")
    if ours:
        for other in ("bare", "locust"):
            if other in by_name:
                ratio = ours["cpu_s_per_1000"] / by_name[other]["cpu_s_per_1000"]
                speed = (ours["msgs_per_s"] or 0) / (by_name[other]["msgs_per_s"] or 1)
                print(f"crosstalk / {other}: CPU per message x{ratio:.2f}, messages/s x{speed:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20, help="messages per user (closed loop)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one run")
    parser.add_argument("--only", choices=GENERATORS, action="append", help="run only these generators")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop",
                        help="loop of the crosstalk and bare generators (default uvloop, as in the suites)")
    parser.add_argument("--state-file", type=Path, help="attach to a running platform's state file")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="crosstalk-bench-"))
    platform = None
    if args.state_file:
        state = json.loads(args.state_file.read_text())
    else:
        platform, state = start_platform(workdir)
    try:
        print(f"platform: {state['backend_url']}  users: {args.users}  messages/user: {args.messages}  "
              f"loop: {args.loop}", flush=True)
        users = create_users(state["auth_url"], args.users)
        results = []
        for generator in args.only or GENERATORS:
            print(f"running {generator} ...", flush=True)
            results.append(run_child(generator, users, state["ws_url"], args.messages, args.timeout, workdir,
                                     args.loop))
        print_table(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if platform is not None:
            os.killpg(platform.pid, signal.SIGTERM)
            try:
                platform.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(platform.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
