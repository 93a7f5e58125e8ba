"""Objects the keyword libraries pass to each other through Robot variables.

`CrosstalkAuth` creates `TestUser` objects; `CrosstalkChat` records every frame a
user's sockets send and receive as `Frame` objects on that user; the isolation
oracle (`crosstalk.oracle`) reads users, frames and `Evidence` gathered from REST,
the databases and Redis.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["in", "out"]


@dataclass
class Frame:
    """One WebSocket frame as seen by the client, time-stamped on arrival (or send)."""

    direction: Direction  # "in" = server -> client, "out" = client -> server
    at: float  # time.time() when received/sent
    monotonic: float  # time.monotonic() at the same instant, for latency arithmetic
    raw: str  # the text as on the wire
    data: dict[str, Any] | None  # parsed JSON object, None if not a JSON object
    connection: str  # connection label, e.g. "alice#1"

    @property
    def type(self) -> str | None:
        return (self.data or {}).get("type")

    @property
    def run_id(self) -> str | None:
        return (self.data or {}).get("run_id")


@dataclass
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int = 0

    def __repr__(self) -> str:  # Robot logs assigned values: never show a token whole
        def short(token: str) -> str:
            return token[:6] + "…" if len(token) > 12 else "***"

        return f"Tokens(access_token={short(self.access_token)}, refresh_token={short(self.refresh_token)})"

    __str__ = __repr__


@dataclass
class Evidence:
    """A piece of data that belongs to `owner` (a user label), found at `where`.

    The oracle searches every piece of evidence for other users' canaries,
    e.g. Evidence(owner="alice", where="GET /threads/t1", text=body).
    """

    owner: str
    where: str
    text: str


_counter = itertools.count(1)


@dataclass(eq=False)
class TestUser:
    """A platform user created by a test.

    `label` is the short name shown in logs ("user01", "alice").  `canary` is a
    secret unique to this user that suites weave into messages; if it ever shows
    up in another user's data, isolation is broken.
    """

    __test__ = False  # not a pytest test class

    label: str
    email: str
    password: str
    canary: str
    user_id: str | None = None
    tokens: Tokens | None = None
    # every access token and jti this user was ever issued (oracle: uniqueness)
    issued_access_tokens: list[str] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    thread_ids: set[str] = field(default_factory=set)
    run_ids: set[str] = field(default_factory=set)
    evidence: list[Evidence] = field(default_factory=list)
    serial: int = field(default_factory=lambda: next(_counter))

    @property
    def access_token(self) -> str:
        if not self.tokens:
            raise AssertionError(f"User '{self.label}' is not logged in: log in first.")
        return self.tokens.access_token

    def __str__(self) -> str:  # what Robot shows when the object is logged
        return f"TestUser({self.label}, {self.email}, id={self.user_id})"

    __repr__ = __str__
