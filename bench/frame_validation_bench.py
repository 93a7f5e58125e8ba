"""Cost of validating received frames against docs/contract/asyncapi.yaml (crosstalk.contract).

Prints microseconds per frame for each frame type (conforming and violating) and the
one-off compile time.  Not asserted anywhere; the numbers belong in docs/architecture.md.

    python bench/frame_validation_bench.py --frames 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "libraries"))

from crosstalk.contract import ASYNCAPI, FrameContract


def event(kind: str, seq: int, **payload) -> dict:
    return {"type": kind, "run_id": "0f8c0d5e-5d2c-4d7e-9a53-0d7c1c5d9a10", "thread_id": "t-1",
            "client_message_id": "cm-1", "user_id": "u-1", "seq": seq,
            "timestamp": "2026-11-30T16:00:00.123Z", "payload": payload}


FRAMES = {
    "agent_started": event("agent_started", 1, agent="triage"),
    "agent_thinking": event("agent_thinking", 3, agent="cost", handoff_from="triage", thought="looking up"),
    "tool_executing": event("tool_executing", 4, agent="cost", tool="history_lookup", tool_call_id="call_1",
                            arguments={"thread_id": "t-1"}),
    "tool_completed": event("tool_completed", 5, agent="cost", tool="history_lookup", tool_call_id="call_1",
                            result={"earlier_messages": ["a", "b"]}),
    "agent_completed": event("agent_completed", 6, agent="cost", response="[cost specialist] ..."),
    "error": {"type": "error", "code": "rate_limited", "message": "slow down", "client_message_id": None},
    "violating tool_completed": event("tool_completed", 5, tool="x", tool_call_id=7, result=None),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20000, help="frames per type (default 20000)")
    args = parser.parse_args()
    started = time.perf_counter()
    contract = FrameContract(__import__("yaml").safe_load(ASYNCAPI.read_text()), str(ASYNCAPI))
    print(f"load and compile {ASYNCAPI.name}: {(time.perf_counter() - started) * 1000:.1f} ms")
    print(f"{'frame':<26} {'us/frame':>9}")
    for name, frame in FRAMES.items():
        started = time.perf_counter()
        for _ in range(args.frames):
            contract.check(frame)
        per = (time.perf_counter() - started) / args.frames * 1e6
        print(f"{name:<26} {per:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
