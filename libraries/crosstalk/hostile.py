"""Hostile input for a chat platform's write endpoints and its WebSocket, and how to judge the answers.

Pure logic (no I/O): `rest_probes` builds request bodies, `frame_probes` builds
frames, `judge_answer` and `judge_frame` say what is wrong with an answer.

What is judged, and what is not: a hostile request must get a 4xx, never a 5xx
or a dropped connection, and no response body may name internals (exception
classes, tracebacks, driver or framework names).  Which 4xx, and whether a limit
is declared at all, is the target's choice: a 2xx is reported but not failed
(a platform may accept a large body or coerce a type).  On the WebSocket each
hostile frame must get an error frame (the contract's ``invalid_json``-style
frames) other than ``internal_error``, and the socket must stay open.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# Names that only leak out of a server by accident: exception classes, tracebacks, drivers, frameworks.
INTERNALS = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|\b[A-Z][A-Za-z0-9]*(?:Error|Exception)\b"
    r"|\b(?:asyncpg|psycopg2?|sqlalchemy|starlette|uvicorn|werkzeug|django|sqlite3|redis\.exceptions)\b"
)


@dataclass(frozen=True)
class RestEndpoint:
    """A write endpoint: where it is, which JSON fields it reads, whether it needs the user's token."""

    name: str
    method: str
    url: str
    fields: tuple[str, ...]
    bearer: bool = False


@dataclass(frozen=True)
class RestProbe:
    endpoint: RestEndpoint
    kind: str
    body: bytes
    oversized: bool = False

    @property
    def label(self) -> str:
        return f"{self.endpoint.name} ← {self.kind}"


@dataclass(frozen=True)
class FrameProbe:
    kind: str
    payload: str | bytes


def _dump(value: object) -> bytes:
    return json.dumps(value).encode()


def nested(depth: int) -> str:
    """``[[[ … ]]]`` nested ``depth`` levels deep."""
    return "[" * depth + "]" * depth


def rest_probes(endpoints: list[RestEndpoint], body_bytes: int, depth: int, unique: str) -> list[RestProbe]:
    """For every endpoint: oversized, deeply nested, wrong types, not an object, invalid UTF-8, NUL,
    lone surrogate.  Each body is otherwise plausible, so that its one flaw is what gets answered.

    Example:
    | register = RestEndpoint("register", "POST", url, ("email", "password"))
    | probes = rest_probes([register], 4 << 20, 10000, "x1")
    """
    probes = []
    for ep in endpoints:
        first = ep.fields[0] if ep.fields else "data"
        plain = {f: f"{f}-{unique}@crosstalk.test" if f == "email" else f"{f}-{unique}-ok" for f in ep.fields}
        padding = "A" * body_bytes
        wrong = {f: ([1, 2] if i % 2 == 0 else {"not": "a string"})
                 for i, f in enumerate(ep.fields or (first,))}
        nul = {f: v.replace("-ok", "-\u0000-ok").replace("@", "\u0000@") for f, v in plain.items()}
        surrogate = json.dumps(plain).replace("-ok", "-\\ud800-ok").replace("@", "\\udfff@")
        invalid_utf8 = json.dumps(plain).encode().replace(b"-ok", b"-\xff\xfe\xc3\x28-ok")
        probes += [
            RestProbe(ep, f"oversized body ({body_bytes} bytes)", _dump({**plain, first: padding}), True),
            RestProbe(ep, f"JSON nested {depth} deep",
                      b'{"' + first.encode() + b'": ' + nested(depth).encode() + b"}"),
            RestProbe(ep, "wrong types", _dump(wrong)),
            RestProbe(ep, "not an object", b"[1, 2, 3]"),
            RestProbe(ep, "invalid UTF-8", invalid_utf8 if ep.fields else b'{"data": "\xff\xfe"}'),
            RestProbe(ep, "NUL characters", _dump(nul) if ep.fields else b'{"data": "\\u0000"}'),
            RestProbe(ep, "lone surrogates", surrogate.encode() if ep.fields else b'{"data": "\\ud800"}'),
        ]
    return probes


def frame_probes(depth: int, unique: str) -> list[FrameProbe]:
    """Hostile WebSocket frames, each under a 64 KB frame limit when ``depth`` <= 30,000.

    Example:
    | probes = frame_probes(20000, "x1")
    """
    def message(**fields: object) -> dict:
        return {"type": "user_message", "client_message_id": f"hostile-{unique}", "content": "hello",
                **fields}

    deep = json.dumps(message())[:-1] + ', "extra": ' + nested(depth) + "}"
    return [
        FrameProbe(f"frame nested {depth} deep ({len(deep)} bytes)", deep),
        FrameProbe("binary frame with invalid UTF-8",
                   json.dumps(message()).encode().replace(b"hello", b"hel\xff\xfelo")),
        FrameProbe("NUL in content", json.dumps(message(content="hel\u0000lo"))),
        FrameProbe("lone surrogate in content", json.dumps(message()).replace("hello", "hel\\ud800lo")),
        FrameProbe("NUL in client_message_id", json.dumps(message(client_message_id=f"h\u0000{unique}"))),
        FrameProbe("content of the wrong type", json.dumps(message(content=12345))),
        FrameProbe("client_message_id of the wrong type", json.dumps(message(client_message_id=["x"]))),
        FrameProbe("thread_id of the wrong type", json.dumps(message(thread_id={"not": "an id"}))),
        FrameProbe("type of the wrong type", json.dumps(message(type=7))),
        FrameProbe("a JSON array", "[1, 2, 3]"),
        FrameProbe("a JSON string", '"user_message"'),
        FrameProbe("null", "null"),
    ]


def internals_in(text: str) -> str | None:
    """The first internal name found in ``text`` (an exception class, a traceback line, a driver), or None.

    Example:
    | internals_in('{"message": "RecursionError: maximum recursion depth exceeded"}')  # 'RecursionError'
    """
    found = INTERNALS.search(text or "")
    return found.group(0) if found else None


def judge_answer(status: int | None, body: str, oversized: bool = False) -> str | None:
    """What is wrong with a REST answer to a hostile request (None: nothing).

    ``status`` None means no HTTP answer arrived (the connection dropped); for an
    oversized body that is a refusal (the server may close without reading it).

    Example:
    | judge_answer(500, "Internal Server Error")  # 'answered HTTP 500'
    """
    if status is None:
        return None if oversized else "dropped the connection without an HTTP answer"
    if status >= 500:
        leaked = internals_in(body)
        return f"answered HTTP {status}" + (f" naming internals ({leaked})" if leaked else "")
    leaked = internals_in(body)
    if leaked:
        return f"answered HTTP {status} naming internals ({leaked})"
    return None


def judge_frame(frame: dict | None, closed: str | None) -> str | None:
    """What is wrong with the server's reaction to a hostile frame (None: a clean error frame).

    Example:
    | judge_frame({"type": "error", "code": "invalid_json"}, None)  # None
    """
    if closed:
        return f"the socket was closed ({closed})"
    if frame is None:
        return "no error frame arrived"
    leaked = internals_in(json.dumps(frame))
    if leaked:
        return f"the answer names internals ({leaked})"
    if frame.get("type") != "error":
        return f"answered with a {frame.get('type')!r} frame instead of an error frame"
    if frame.get("code") == "internal_error":
        return "answered internal_error (the frame broke the server)"
    return None
