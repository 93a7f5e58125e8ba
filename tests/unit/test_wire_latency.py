"""bench/wire_latency.py decodes a loopback capture into per-message wire latencies (pure logic)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import wire_latency

PORT = 8765
CLIENT = 50000


def _packet(sport: int, dport: int, seq: int, payload: bytes = b"", syn: bool = False) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02 if syn else 0x18, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, bytes([127, 0, 0, 1]),
                     bytes([127, 0, 0, 1]))
    return b"\0" * 12 + b"\x08\x00" + ip + tcp + payload


def _ws(text: str, mask: bytes | None = None) -> bytes:
    data = text.encode()
    header = bytes([0x81])
    length = len(data)
    masked = 0x80 if mask else 0
    header += bytes([masked | length]) if length < 126 else bytes([masked | 126]) + length.to_bytes(2, "big")
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        header += mask
    return header + data


def _capture(path: Path, records: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as handle:
        for stamp, pkt in records:
            handle.write(wire_latency.RECORD.pack(stamp, len(pkt)) + pkt)


def test_message_latency_runs_from_the_request_packet_to_the_completion_packet(tmp_path):
    ms = 1_000_000
    request = _ws(json.dumps({"type": "user_message", "client_message_id": "m1", "content": "x" * 200}),
                  mask=b"\x01\x02\x03\x04")
    started = _ws(json.dumps({"type": "agent_started", "client_message_id": "m1"}))
    done = _ws(json.dumps({"type": "agent_completed", "client_message_id": "m1", "payload": {}}))
    up, down = b"GET /ws HTTP/1.1\r\n\r\n", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    records = [
        (0, _packet(CLIENT, PORT, 99, syn=True)),
        (0, _packet(PORT, CLIENT, 499, syn=True)),
        (1 * ms, _packet(CLIENT, PORT, 100, up)),
        (2 * ms, _packet(PORT, CLIENT, 500, down)),
        (10 * ms, _packet(CLIENT, PORT, 100 + len(up), request[:50])),  # the request in two segments
        (11 * ms, _packet(CLIENT, PORT, 100 + len(up) + 50, request[50:])),
        (11 * ms, _packet(CLIENT, PORT, 100 + len(up) + 50, request[50:])),  # a retransmission
        (20 * ms, _packet(PORT, CLIENT, 500 + len(down), started + done[:10])),
        (45 * ms, _packet(PORT, CLIENT, 500 + len(down) + len(started) + 10, done[10:])),
    ]
    _capture(tmp_path / "c.cap", records)
    latencies, seen = wire_latency.wire_latencies(tmp_path / "c.cap", PORT)
    # from the segment completing the request to the one completing the answer
    assert latencies == {"m1": 0.034}
    assert seen == {"sent_seen": 1, "completed_seen": 1, "broken_streams": 0}


def test_a_lost_segment_makes_the_stream_unreadable_not_wrong(tmp_path):
    done = _ws(json.dumps({"type": "agent_completed", "client_message_id": "m1"}))
    records = [
        (0, _packet(PORT, CLIENT, 499, syn=True)),
        (1, _packet(PORT, CLIENT, 500, b"HTTP/1.1 101 OK\r\n\r\n")),
        (2, _packet(PORT, CLIENT, 900, done)),  # bytes 519..899 never captured
    ]
    _capture(tmp_path / "c.cap", records)
    latencies, seen = wire_latency.wire_latencies(tmp_path / "c.cap", PORT)
    assert latencies == {} and seen["broken_streams"] == 1 and seen["completed_seen"] == 0


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert wire_latency.percentile(values, 99) == 99.0
    assert wire_latency.percentile(values, 50) == 50.0
    assert wire_latency.percentile([], 99) is None
