#!/usr/bin/env python3
"""Added latency over the wire: a generator's reported p50/p95/p99 against the same messages on the wire.

For each generator (``crosstalk``, ``lean``: see ``load_bench.py``) and round, a
packet capture on loopback records the chat port's traffic while the generator
runs N users x M messages in a closed loop.  The capture is an ``AF_PACKET``
socket with a kernel filter for the backend's TCP port and kernel time stamps
(``SO_TIMESTAMPNS``), in its own process; it needs root (``CAP_NET_RAW``) and
nothing else.  After the run the TCP streams are reassembled, the WebSocket
frames decoded (client frames unmasked) and each message's wire latency taken
from the packet carrying its ``user_message`` to the packet carrying its
``agent_completed``.  The generator's own figures (send -> completion as it
measured them) minus the wire's figures is what the generator adds: event-loop
scheduling, parsing, checks, garbage-collector pauses.  Two views of it: the
reported percentile minus the wire percentile (``added_p99_ms``, the issue's
definition; the difference of two tails of ~2,000 samples, so it is noisy), and
the percentiles of the per-message difference, message by message
(``per_msg_added_p99_ms``, from each generator's own per-message latencies).

    python bench/wire_latency.py                                  # 100 users x 20 messages, 3 rounds
    python bench/wire_latency.py --users 4000 --messages 2 --rounds 2

Prints one table: per generator the medians over rounds of its reported
percentiles, the wire's, and the added latency; then Crosstalk's added p99
against the lean loop's (goal, issue 14: within 2x).  Numbers are printed,
never asserted.  Without the capture permission it prints one line saying so.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchplatform import BenchPlatform, create_users

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
RECORD = struct.Struct("<qI")  # nanoseconds (CLOCK_REALTIME), packet length


def port_filter(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF for ``ip and tcp port PORT`` (what ``tcpdump -dd`` prints for its IPv4 part)."""
    return [
        (0x28, 0, 0, 12),        # ldh [12]            ethertype
        (0x15, 0, 8, 0x0800),    # jne IPv4 -> drop
        (0x30, 0, 0, 23),        # ldb [23]            IP protocol
        (0x15, 0, 6, 6),         # jne TCP -> drop
        (0x28, 0, 0, 20),        # ldh [20]            fragment offset
        (0x45, 4, 0, 0x1FFF),    # jset fragment -> drop
        (0xB1, 0, 0, 14),        # ldxb 4*([14]&0xf)   IP header length
        (0x48, 0, 0, 14),        # ldh [x+14]          source port
        (0x15, 2, 0, port),      # jeq port -> accept
        (0x48, 0, 0, 16),        # ldh [x+16]          destination port
        (0x15, 0, 1, port),      # jne port -> drop
        (0x06, 0, 0, 262144),    # accept: ret snaplen
        (0x06, 0, 0, 0),         # drop: ret 0
    ]


def open_capture(port: int) -> socket.socket:
    """An AF_PACKET socket on loopback that sees only ``port``'s TCP packets, with kernel time stamps."""
    program = port_filter(port)
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in program))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # the kernel copies the program while attaching: `code` only has to live until then
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 * 1024 * 1024)
    sock.bind(("lo", 0))
    return sock


def capture_missing() -> str | None:
    """None when a loopback capture can be opened, else one line saying what is missing."""
    if not hasattr(socket, "AF_PACKET"):
        return "wire latency not measured: this system has no AF_PACKET sockets (Linux only)"
    try:
        open_capture(9).close()
    except PermissionError:
        return ("wire latency not measured: the packet capture needs CAP_NET_RAW for an AF_PACKET socket "
                "on loopback (run as root)")
    except OSError as exc:
        return f"wire latency not measured: no packet capture on loopback ({exc})"
    return None


def sniff(port: int, out: Path) -> None:
    """Child process: write every outgoing loopback packet of ``port`` to ``out`` until SIGTERM."""
    sock = open_capture(port)
    sock.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ancillary = socket.CMSG_SPACE(16)
    with open(out, "wb", buffering=4 * 1024 * 1024) as handle:
        print("READY", flush=True)
        while not stop:
            try:
                data, cmsgs, _flags, address = sock.recvmsg(262144, ancillary)
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            if address[2] != PACKET_OUTGOING:
                continue  # loopback shows each packet twice: sent and received; keep the send
            stamp = time.time_ns()
            for level, kind, value in cmsgs:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanos = struct.unpack("qq", value[:16])
                    stamp = seconds * 1_000_000_000 + nanos
            handle.write(RECORD.pack(stamp, len(data)))
            handle.write(data)
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    print(f"STATS {packets} {drops}", flush=True)


# ------------------------------------------------------------------ decoding a capture
def packets(path: Path):
    with open(path, "rb") as handle:
        blob = handle.read()
    pos = 0
    while pos + RECORD.size <= len(blob):
        stamp, length = RECORD.unpack_from(blob, pos)
        pos += RECORD.size
        yield stamp, blob[pos:pos + length]
        pos += length


def unmask(payload: bytes, key: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


class Stream:
    """One direction of one TCP connection: HTTP upgrade, then WebSocket frames."""

    def __init__(self, seq: int) -> None:
        self.next_seq = seq
        self.buffer = bytearray()
        self.http = True
        self.broken = False

    def feed(self, seq: int, payload: bytes):
        """The text frames completed by this segment."""
        if self.broken:
            return
        if seq != self.next_seq:
            if (seq - self.next_seq) % 2**32 < 2**31:  # a gap: a lost segment; this stream is unreadable
                self.broken = True
                return
            skip = (self.next_seq - seq) % 2**32  # a retransmission overlapping what we have
            if skip >= len(payload):
                return
            payload, seq = payload[skip:], self.next_seq
        self.next_seq = (seq + len(payload)) % 2**32
        self.buffer += payload
        if self.http:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            del self.buffer[:end + 4]
            self.http = False
        yield from self._frames()

    def _frames(self):
        buf = self.buffer
        while len(buf) >= 2:
            opcode, masked, length, pos = buf[0] & 0x0F, buf[1] & 0x80, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            key = b""
            if masked:
                if len(buf) < pos + 4:
                    return
                key, pos = bytes(buf[pos:pos + 4]), pos + 4
            if len(buf) < pos + length:
                return
            payload = bytes(buf[pos:pos + length])
            del buf[:pos + length]
            if opcode == 1:
                yield unmask(payload, key) if masked else payload


def wire_latencies(path: Path, port: int) -> tuple[dict[str, float], dict]:
    """Seconds from each message's user_message packet to its agent_completed packet, by message id."""
    streams: dict[tuple, Stream] = {}
    sent: dict[str, int] = {}
    done: dict[str, int] = {}
    broken = 0
    for stamp, pkt in packets(path):
        ihl = (pkt[14] & 0x0F) * 4
        total = int.from_bytes(pkt[16:18], "big")
        tcp = 14 + ihl
        sport, dport = int.from_bytes(pkt[tcp:tcp + 2], "big"), int.from_bytes(pkt[tcp + 2:tcp + 4], "big")
        seq = int.from_bytes(pkt[tcp + 4:tcp + 8], "big")
        flags = pkt[tcp + 13]
        payload = pkt[tcp + (pkt[tcp + 12] >> 4) * 4:14 + total]
        key = (pkt[26:30], sport, pkt[30:34], dport)
        if flags & 0x02:  # SYN: the stream starts after it
            streams[key] = Stream((seq + 1) % 2**32)
            continue
        stream = streams.get(key)
        if stream is None or not payload:
            continue
        was_broken = stream.broken
        for text in stream.feed(seq, payload):
            if b"client_message_id" not in text:
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue
            cmid, kind = data.get("client_message_id"), data.get("type")
            if dport == port and kind == "user_message":
                sent.setdefault(cmid, stamp)
            elif sport == port and kind == "agent_completed":
                done.setdefault(cmid, stamp)
        broken += stream.broken and not was_broken
    latencies = {c: (done[c] - sent[c]) / 1e9 for c in sent if c in done}
    return latencies, {"sent_seen": len(sent), "completed_seen": len(done), "broken_streams": broken}


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank, as HdrHistogram reports it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(p / 100 * len(ordered))) - 1)]


# ------------------------------------------------------------------ one measured run
def measured_run(generator: str, users: list[dict], ws_url: str, args: argparse.Namespace,
                 workdir: Path) -> dict:
    from load_bench import measure

    port = urlsplit(ws_url).port
    capture = workdir / f"{generator}.cap"
    sniffer = subprocess.Popen([sys.executable, __file__, "--sniff", str(port), str(capture)],
                               stdout=subprocess.PIPE, text=True)
    ready = sniffer.stdout.readline().strip()  # type: ignore[union-attr]
    if ready != "READY":
        sniffer.kill()
        return {"generator": generator, "error": f"capture did not start: {ready or sniffer.wait()}"}
    per_message_file = workdir / f"{generator}-per-message.json"
    try:
        result = measure(generator, users, ws_url, args.messages, args.timeout, workdir, args.loop,
                         per_message_file)
    finally:
        time.sleep(0.5)  # the last frames reach the capture
        sniffer.send_signal(signal.SIGTERM)
        stats = sniffer.communicate(timeout=60)[0].split()
    if "error" in result:
        return result
    wire, seen = wire_latencies(capture, port)
    capture.unlink()
    reported = json.loads(per_message_file.read_text()) if per_message_file.exists() else {}
    added = [reported[c] - wire[c] for c in wire if c in reported]  # per message: what the generator adds
    row = {"generator": generator, "completed": result["completed"], "wire_matched": len(added),
           "capture_drops": int(stats[-1]) if len(stats) >= 3 else None, **seen}
    for p in (50, 95, 99):
        on_wire = percentile(list(wire.values()), p)
        row[f"p{p}_ms"] = result.get(f"p{p}_ms")
        row[f"wire_p{p}_ms"] = None if on_wire is None else round(on_wire * 1e3, 2)
        row[f"added_p{p}_ms"] = (None if row[f"p{p}_ms"] is None or on_wire is None
                                 else round(row[f"p{p}_ms"] - on_wire * 1e3, 2))
        per_message = percentile(added, p)
        row[f"per_msg_added_p{p}_ms"] = None if per_message is None else round(per_message * 1e3, 2)
    row["gc_max_pause_ms"] = result.get("gc_max_pause_ms")
    row["errors"] = result.get("errors")
    row["first_errors"] = result.get("first_errors")
    return row


def report(rounds: list[list[dict]], generators: list[str]) -> list[str]:
    columns = ("p50_ms", "wire_p50_ms", "added_p50_ms", "p95_ms", "wire_p95_ms", "added_p95_ms", "p99_ms",
               "wire_p99_ms", "added_p99_ms", "per_msg_added_p50_ms", "per_msg_added_p99_ms", "wire_matched",
               "capture_drops")
    lines = [f"{'generator':>10} {'runs':>4} " + " ".join(f"{c:>13}" for c in columns) + "   (medians)"]
    for name in generators:
        runs = [r for rnd in rounds for r in rnd if r["generator"] == name and "error" not in r]
        if not runs:
            failed = [r["error"] for rnd in rounds for r in rnd if r["generator"] == name]
            lines.append(f"{name:>10} FAILED: {failed[0] if failed else 'not run'}")
            continue
        cells = []
        for key in columns:
            values = [r.get(key) for r in runs if r.get(key) is not None]
            cells.append(f"{statistics.median(values):>13g}" if values else f"{'':>13}")
        lines.append(f"{name:>10} {len(runs):>4} " + " ".join(cells))
    for key, what in (("added_p99_ms", "reported p99 - wire p99"),
                      ("per_msg_added_p99_ms", "p99 of (reported - wire) per message")):
        ratios = []
        for rnd in rounds:
            by = {r["generator"]: r for r in rnd if r.get(key) is not None}
            if "crosstalk" in by and "lean" in by and by["lean"][key] > 0:
                ratios.append(by["crosstalk"][key] / by["lean"][key])
        if ratios:
            value = statistics.median(ratios)
            spread = ", ".join(f"{r:.2f}" for r in ratios)
            lines.append(f"crosstalk / lean added latency, {what}: x{value:.2f} (rounds: {spread})"
                         f"  goal <= 2x: {'met' if value <= 2 else 'NOT met'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20, help="messages per user (closed loop)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the order alternates each round")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one run")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--only", choices=("crosstalk", "lean"), action="append")
    parser.add_argument("--sniff", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sniff:
        sniff(int(args.sniff[0]), Path(args.sniff[1]))
        return 0
    missing = capture_missing()
    if missing:
        print(missing)
        return 0
    generators = list(args.only or ("crosstalk", "lean"))
    workdir = Path(tempfile.mkdtemp(prefix="crosstalk-wire-"))
    with BenchPlatform(workdir) as state:
        users = create_users(state["auth_url"], args.users)
        for index, user in enumerate(users):
            user["index"] = index
        print(f"platform {state['ws_url']}  users {args.users}  messages/user {args.messages}  rounds "
              f"{args.rounds}  load average {os.getloadavg()[0]:.1f}", flush=True)
        rounds = []
        for number in range(args.rounds):
            order = generators if number % 2 == 0 else generators[::-1]
            results = []
            for generator in order:
                row = measured_run(generator, users, state["ws_url"], args, workdir)
                print(f"round {number + 1} {generator}: {json.dumps(row)}", flush=True)
                results.append(row)
            rounds.append(results)
    print(f"load average after {os.getloadavg()[0]:.1f}")
    for line in report(rounds, generators):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
