"""Pooled HTTP sessions that survive the keep-alive race.

A pooled keep-alive connection can be closed by the server (its idle timeout,
5 s in uvicorn) at the very moment the client sends the next request on it.
urllib3 checks a pooled connection for a close before reusing it, but a close
that is still in flight passes that check: the request goes out, the server's
kernel answers it with a FIN or RST, and the client sees
``RemoteDisconnected('Remote end closed connection without response')`` or
``ConnectionResetError``.  The server never read that request: it had decided
to close the connection before the request arrived.

`pooled_session` retries such a request **once**, on a fresh connection, and
only when all of this holds:

- the connection was *reused* from the pool (a fresh connection that dies before
  answering is a sick server, and the failure is reported);
- it failed before any byte of the response arrived (``RemoteDisconnected`` is
  raised exactly when the status line is empty; a reset while the status line
  is read is treated alike: a server that had started to answer does not reset);
- repeating the request is harmless even if, against the odds, the first copy
  was processed: idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE),
  ``POST /auth/login`` (a second login only opens one more session) and
  ``POST /auth/register`` (a processed first copy makes the retry answer 409,
  which the caller reports; nothing is created twice).  ``POST /auth/refresh``
  is never repeated: its token is single-use, and a repeat would look like
  token theft and revoke the family.

Read timeouts are never retried (the server may be working on it, and a retry
would double every wait); connection errors on a new connection are not retried.

Example:
    session = pooled_session(pool_maxsize=32)
    session.post("http://127.0.0.1:8081/auth/login", json=body, timeout=15)
"""

from __future__ import annotations

import http.client
from types import TracebackType
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ProtocolError
from urllib3.util.retry import Retry

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# POSTs whose accidental repetition changes nothing a test relies on (see the module docstring).
REPEATABLE_POSTS = frozenset({"/auth/login", "/auth/register"})


class StaleConnectionError(ProtocolError):
    """The server closed a pooled keep-alive connection before sending any byte of the response."""


def safe_to_repeat(method: str | None, url: str | None) -> bool:
    """Whether a request whose first copy the server may (rarely) have processed may be sent again.

    Example:
        safe_to_repeat("POST", "/auth/login")    # True
        safe_to_repeat("POST", "/auth/refresh")  # False
    """
    method = (method or "").upper()
    if method in IDEMPOTENT_METHODS:
        return True
    path = urlsplit(url or "").path.rstrip("/")
    return method == "POST" and path in REPEATABLE_POSTS


class _ReuseAware:
    """Marks failures of a reused connection before the response as `StaleConnectionError`."""

    def _make_request(self, conn, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        # A connection that served earlier requests keeps its socket; a new one (or one urllib3 found
        # closed and reset) connects inside _make_request.
        reused = getattr(conn, "sock", None) is not None
        try:
            return super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
            if not reused:
                raise
            raise StaleConnectionError(
                f"the server closed the pooled keep-alive connection before answering {method} {url}",
                error,
            ) from error


class ReuseAwareHTTPConnectionPool(_ReuseAware, HTTPConnectionPool):
    pass


class ReuseAwareHTTPSConnectionPool(_ReuseAware, HTTPSConnectionPool):
    pass


class KeepAliveRetry(Retry):
    """Retry once, and only a `StaleConnectionError` of a request that is `safe_to_repeat`."""

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response=None,  # type: ignore[no-untyped-def]
        error: Exception | None = None,
        _pool=None,  # type: ignore[no-untyped-def]
        _stacktrace: TracebackType | None = None,
    ) -> Retry:
        if isinstance(error, StaleConnectionError) and safe_to_repeat(method, url):
            return super().increment(method, url, response, error, _pool, _stacktrace)
        # anything else fails as it would without this class (requests' default: no retries)
        no_retry = self.new(total=0, read=False)
        return Retry.increment(no_retry, method, url, response, error, _pool, _stacktrace)


def keep_alive_retry() -> KeepAliveRetry:
    """One retry of a stale pooled connection; nothing else (no status, redirect or timeout retries)."""
    return KeepAliveRetry(total=1, connect=0, read=1, redirect=0, status=0, other=0, allowed_methods=None,
                          respect_retry_after_header=False, raise_on_status=False, raise_on_redirect=False)


class KeepAliveAdapter(HTTPAdapter):
    """An `HTTPAdapter` whose pools tell a stale keep-alive connection apart and retry it once."""

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("max_retries", keep_alive_retry())
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": ReuseAwareHTTPConnectionPool, "https": ReuseAwareHTTPSConnectionPool,
        }


def pooled_session(pool_connections: int = 4, pool_maxsize: int = 10) -> requests.Session:
    """A `requests.Session` with keep-alive pools whose stale connections are retried once when safe.

    Example:
        session = pooled_session(pool_maxsize=32)
        reply = session.get("http://127.0.0.1:8000/health", timeout=5)
    """
    session = requests.Session()
    adapter = KeepAliveAdapter(pool_connections=pool_connections, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
