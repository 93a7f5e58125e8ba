"""The keep-alive race: a pooled connection closed by the server as the next request arrives.

A tiny HTTP/1.1 server on a real socket answers the first request of each
connection with keep-alive (no ``Connection: close``), then reads the next
request on that connection and closes it without a byte of response: the
outcome of the race between an idle timeout on the server and a client reusing
the connection.  `pooled_session` must retry such a request once on a fresh
connection when it is safe to repeat, and must not retry anything else.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from crosstalk.httpretry import KeepAliveRetry, pooled_session, safe_to_repeat

TIMEOUT = 5.0


@dataclass
class Seen:
    connection: int
    method: str
    path: str
    answered: bool


@dataclass
class RacyServer:
    """``mode``: ``fin`` / ``rst`` drop every request but the first of a connection (closing with FIN or
    RST); ``drop_all`` drops every request; ``silent`` reads requests and never answers."""

    mode: str
    seen: list[Seen] = field(default_factory=list)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def start(self) -> RacyServer:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self._connections += 1
            threading.Thread(target=self._serve, args=(conn, self._connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(TIMEOUT * 2)
        buffer = b""
        served = 0
        with conn:
            while not self._stop.is_set():
                request, buffer = _read_request(conn, buffer)
                if request is None:
                    return
                method, path = request
                drop = self.mode == "drop_all" or (self.mode in ("fin", "rst") and served >= 1)
                self.seen.append(Seen(number, method, path, answered=not drop and self.mode != "silent"))
                if self.mode == "silent":
                    self._stop.wait(TIMEOUT)
                    return
                if drop:
                    if self.mode == "rst":  # close with unread data semantics: a reset, not a FIN
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                body = b'{"ok": true}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                served += 1

    def answered(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path and seen.answered]

    def dropped(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path and not seen.answered]


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[tuple[str, str] | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None, b""
        if not chunk:
            return None, b""
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                   if line.lower().startswith("content-length:")), 0)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return (method, path), rest[length:]


@pytest.fixture
def server_factory() -> Iterator:
    started: list[RacyServer] = []

    def factory(mode: str) -> RacyServer:
        started.append(RacyServer(mode).start())
        return started[-1]

    yield factory
    for server in started:
        server.stop()


@pytest.mark.parametrize("mode", ["fin", "rst"])
def test_without_the_retry_the_race_fails_the_request(server_factory, mode):
    server = server_factory(mode)
    plain = requests.Session()
    assert plain.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200
    with pytest.raises(requests.ConnectionError):
        plain.post(f"{server.url}/auth/register", json={"email": "a@b.test"}, timeout=TIMEOUT)


@pytest.mark.parametrize("mode", ["fin", "rst"])
@pytest.mark.parametrize(("method", "path"), [("GET", "/threads"), ("POST", "/auth/register"),
                                              ("POST", "/auth/login"), ("DELETE", "/threads/1")])
def test_a_stale_connection_is_retried_once_on_a_fresh_one(server_factory, mode, method, path):
    server = server_factory(mode)
    session = pooled_session()
    assert session.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200
    reply = session.request(method, f"{server.url}{path}", json={"email": "a@b.test"}, timeout=TIMEOUT)
    assert reply.status_code == 200
    dropped, answered = server.dropped(path), server.answered(path)
    assert len(dropped) == 1 and len(answered) == 1, server.seen
    assert answered[0].connection != dropped[0].connection, "the retry reused the stale connection"
    assert len(reply.raw.retries.history) == 1


def test_a_refresh_is_never_repeated(server_factory):
    server = server_factory("fin")
    session = pooled_session()
    session.get(f"{server.url}/health", timeout=TIMEOUT)
    with pytest.raises(requests.ConnectionError, match="closed the pooled keep-alive connection"):
        session.post(f"{server.url}/auth/refresh", json={"refresh_token": "x"}, timeout=TIMEOUT)
    assert len(server.seen) == 2 and len(server.dropped("/auth/refresh")) == 1, server.seen


def test_a_fresh_connection_dropped_before_answering_is_not_retried(server_factory):
    server = server_factory("drop_all")
    with pytest.raises(requests.ConnectionError):
        pooled_session().get(f"{server.url}/threads", timeout=TIMEOUT)
    assert len(server.seen) == 1, server.seen


def test_a_read_timeout_is_not_retried(server_factory):
    server = server_factory("silent")
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        pooled_session().get(f"{server.url}/threads", timeout=0.5)
    assert time.monotonic() - started < 2 * 0.5 + 0.5
    assert len(server.seen) == 1, server.seen


def test_a_refused_connection_is_reported_at_once():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    with pytest.raises(requests.ConnectionError):  # a refused connection is reported, not retried forever
        pooled_session().get(f"http://127.0.0.1:{dead}/health", timeout=TIMEOUT)


def test_what_may_be_repeated():
    assert safe_to_repeat("GET", "/threads?x=1") and safe_to_repeat("delete", "/threads/1")
    assert safe_to_repeat("POST", "/auth/login") and safe_to_repeat("POST", "/auth/register")
    assert not safe_to_repeat("POST", "/auth/refresh") and not safe_to_repeat("POST", "/auth/logout")
    assert not safe_to_repeat("POST", "/threads/1/messages") and not safe_to_repeat("POST", "/workspaces")


def test_the_auth_and_isolation_libraries_and_the_load_generator_use_the_retrying_session():
    from crosstalk import load
    from CrosstalkAuth import CrosstalkAuth
    from CrosstalkIsolation import CrosstalkIsolation

    for session in (CrosstalkAuth()._http, CrosstalkIsolation()._http, load._session()):
        assert isinstance(session.get_adapter("http://127.0.0.1/").max_retries, KeepAliveRetry)
