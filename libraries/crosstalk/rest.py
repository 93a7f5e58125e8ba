"""The platform's backend REST API as the keyword libraries call it.

One pooled keep-alive session (:func:`crosstalk.httpretry.pooled_session`: a stale pooled
connection is retried once where that is safe), the one HTTP timeout, bearer headers that
show masked when logged (:class:`crosstalk.secrets.MaskedHeaders`), and the target's URL
from the target context (``${BACKEND_URL}``).

Example:
    backend = Backend()
    threads = backend.get_json(alice, "/threads")
    reply = backend.request("POST", alice, "/workspaces", json={"name": "Q3"})
"""

from __future__ import annotations

import socket
import time
import urllib.parse
from typing import Any

import requests

from . import context
from .errors import CrosstalkError
from .httpretry import HTTP_TIMEOUT, pooled_session
from .model import TestUser
from .secrets import MaskedHeaders


class RestError(CrosstalkError):
    """A REST call to the platform answered something other than what the caller needs."""


def bearer(token: str) -> MaskedHeaders:
    """``{"Authorization": "Bearer <token>"}``, masked when logged.

    Example:
        requests.get(url, headers=bearer(alice.access_token), timeout=HTTP_TIMEOUT)
    """
    return MaskedHeaders(Authorization=f"Bearer {token}")


def json_or_text(reply: requests.Response) -> Any:
    """The reply's JSON body, or the first 200 characters of its text when it is not JSON."""
    try:
        return reply.json()
    except ValueError:
        return reply.text[:200]


def service_url(name: str = "BACKEND_URL") -> str:
    """``${BACKEND_URL}`` (or ``${AUTH_URL}``...) of the target context, without a trailing slash."""
    url = context.current().get(name)
    if not url:
        raise RestError(f"{name} is not set: run 'Start Or Attach Platform' in the suite setup first.")
    return str(url).rstrip("/")


def warm_sessions(count: int, base_url: str) -> list[requests.Session]:
    """``count`` pooled sessions whose connection to ``base_url`` is already open (``GET /health``),
    so that a race starts at the request, not at the TCP handshake.

    Example:
        sessions = warm_sessions(8, service_url("AUTH_URL"))
    """
    sessions = [pooled_session(pool_connections=1, pool_maxsize=1) for _ in range(count)]
    for session in sessions:
        session.get(f"{base_url}/health", timeout=HTTP_TIMEOUT)
    return sessions


class Backend:
    """REST calls to ``${BACKEND_URL}`` as a user, on one pooled keep-alive session."""

    def __init__(self, pool_maxsize: int = 64) -> None:
        self.http = pooled_session(pool_connections=2, pool_maxsize=pool_maxsize)

    @property
    def url(self) -> str:
        return service_url("BACKEND_URL")

    def request(self, method: str, user: TestUser | None, path: str, headers: dict | None = None,
                **kwargs: Any) -> requests.Response:
        """``method path`` as ``user`` (bearer token) or anonymously; the reply whatever its status."""
        sent = dict(bearer(user.access_token) if user is not None else {}, **(headers or {}))
        return self.http.request(method, f"{self.url}{path}", headers=sent, timeout=HTTP_TIMEOUT, **kwargs)

    def get_json(self, user: TestUser, path: str) -> Any:
        """``GET path`` as ``user``; its JSON body, or a `RestError` naming the status."""
        reply = self.request("GET", user, path)
        if reply.status_code != 200:
            raise RestError(f"GET {path} as {user.label} answered {reply.status_code}: {json_or_text(reply)}")
        return reply.json()

    def hang_up_mid_request(self, user: TestUser, path: str, after: float) -> None:
        """Send ``GET path`` as ``user`` over a raw socket and reset it ``after`` seconds later,
        before the reply (a client that disconnects while its request is being served)."""
        parts = urllib.parse.urlsplit(self.url)
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=HTTP_TIMEOUT) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {user.access_token}"
                "\r\nConnection: close\r\n\r\n".encode()
            )
            time.sleep(after)
            # RST instead of FIN: the server learns at once that nobody waits for the answer.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def close(self) -> None:
        self.http.close()
