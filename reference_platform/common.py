"""Pieces both services share: schemas, pools, JSON errors, bearer tokens."""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg
import redis.asyncio as aioredis
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from . import faults, variant
from .tokens import TokenError, Verifier

log = logging.getLogger("reference_platform")

AUTH_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id uuid PRIMARY KEY,
    email text UNIQUE NOT NULL,
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    family_id uuid NOT NULL,
    token_hash text UNIQUE NOT NULL,
    used_at timestamptz NULL,
    revoked_at timestamptz NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens(user_id);
"""

BACKEND_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread_id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    title text NOT NULL,
    message_count int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS threads_user ON threads(user_id, created_at DESC);
CREATE TABLE IF NOT EXISTS messages (
    message_id uuid PRIMARY KEY,
    thread_id uuid NOT NULL REFERENCES threads(thread_id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    role text NOT NULL CHECK (role IN ('user', 'agent')),
    content text NOT NULL,
    run_id uuid NULL,
    client_message_id text NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS messages_thread ON messages(thread_id, created_at);
CREATE TABLE IF NOT EXISTS runs (
    run_id uuid PRIMARY KEY,
    thread_id uuid NOT NULL REFERENCES threads(thread_id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    agent text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz NULL
);
CREATE INDEX IF NOT EXISTS runs_thread ON runs(thread_id);
"""


MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32


class BadInput(Exception):
    """Hostile or malformed input: answered with ``status`` and ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def storable(text: str) -> bool:
    """False for text PostgreSQL cannot hold: NUL characters or lone surrogates (JSON ``\\ud800``)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json_value(value: object, max_depth: int = MAX_JSON_DEPTH, text: bool = True) -> None:
    """Raises BadInput when ``value`` nests deeper than ``max_depth`` or (``text``) holds unstorable text.

    Iterative, so a value that parsed can be checked whatever its depth.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise BadInput(400, "invalid_json", f"JSON nests deeper than {max_depth} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif text and isinstance(item, str) and not storable(item):
            raise BadInput(422, "invalid_text",
                           "strings must be valid Unicode without NUL characters or lone surrogates")


def parse_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> object:
    """JSON from a request body or frame; BadInput (400/422) for anything malformed or hostile.

    The C parser refuses nesting past the interpreter's recursion limit with
    RecursionError (answered 400 here); what it parsed is then checked
    iteratively against ``max_depth`` and for unstorable text.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(400, "invalid_json", "the body is not valid UTF-8") from None
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadInput(400, "invalid_json", "the body is not valid JSON") from None
    except RecursionError:
        if faults.on("hostile_input_500"):
            raise
        raise BadInput(400, "invalid_json", f"JSON nests deeper than {max_depth} levels") from None
    if not faults.on("hostile_input_500"):
        check_json_value(value, max_depth)
    return value


async def json_object(request: Request) -> dict | None:
    """The request body if it is a JSON object, else None (valid JSON of another type).

    Malformed or hostile bodies raise BadInput: invalid UTF-8 or JSON and nesting
    deeper than MAX_JSON_DEPTH (400), NUL characters or lone surrogates (422).
    """
    body = parse_json(await request.body())
    return body if isinstance(body, dict) else None


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def bad_input(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BadInput)
    return error(exc.status, exc.code, exc.message)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Catch-all: the client gets a neutral body (no exception names); Starlette re-raises, so the
    server logs the cause with its traceback."""
    if faults.on("hostile_input_500"):  # the bug: internals in the body
        return error(500, "internal_error", f"{type(exc).__name__}: {exc}"[:300])
    return error(500, "internal_error", "the server could not handle this request")


EXCEPTION_HANDLERS = {BadInput: bad_input, Exception: internal_error}


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes are answered 413 before any parsing.

    A declared Content-Length over the limit is refused without reading the body;
    a body streamed without one (chunked) is counted as it arrives and refused as
    soon as it passes the limit.  Accepted bodies are replayed to the app.
    """

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is None and not chunked:
            await self.app(scope, receive, send)
            return
        if length is not None:
            if not length.strip().isdigit():
                await self._refuse(send, 400, "invalid_length", "Content-Length must be a number of bytes")
                return
            if int(length) > self.limit:
                await self._refuse_large(send)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse_large(self, send) -> None:
        await self._refuse(send, 413, "body_too_large", f"request bodies are limited to {self.limit} bytes")

    @staticmethod
    async def _refuse(send, status: int, code: str, message: str) -> None:
        await error(status, code, message)({"type": "http"}, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}


UNAUTHORIZED = {"error": "unauthorized", "message": "a valid Bearer access token is required"}


def unauthorized() -> JSONResponse:
    # One body for every reason, so a client learns nothing about why a token failed.
    return JSONResponse(UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def bearer_token(conn: HTTPConnection) -> str | None:
    headers = conn.headers.getlist("authorization")
    if len(headers) != 1:  # none, or duplicated: a proxy and this service might each read another one
        return None
    header = headers[0]
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(conn: HTTPConnection, verifier: Verifier, redis: aioredis.Redis) -> dict | None:
    """Verified claims of the request's bearer token, or None (missing, invalid or revoked)."""
    token = bearer_token(conn)
    if token is None:
        return None
    try:
        claims = verifier.verify(token)
    except TokenError:
        return None
    if await redis.exists(variant.key("revoked", claims.get("jti"))):
        return None
    return claims


async def create_pool(url: str, size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(url, min_size=2, max_size=size, command_timeout=30)


async def ensure_schema(pool: asyncpg.Pool, ddl: str) -> None:
    # Two launchers on one external server may race to create the same tables.
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(424242)")
        try:
            await conn.execute(ddl)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(424242)")


async def health(pool: asyncpg.Pool, redis: aioredis.Redis, extra: dict) -> JSONResponse:
    body = {"status": "ok", "postgres": "ok", "redis": "ok"}
    # an unauthenticated endpoint says which part is down, never why: the cause goes to the log
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), 2)
    except Exception:
        log.warning("health: PostgreSQL check failed", exc_info=True)
        body["postgres"] = "unavailable"
    try:
        await asyncio.wait_for(redis.ping(), 2)
    except Exception:
        log.warning("health: Redis check failed", exc_info=True)
        body["redis"] = "unavailable"
    failing = [name for name in ("postgres", "redis") if body[name] != "ok"]
    if failing:
        body["status"] = f"unavailable: {', '.join(failing)}"
    body.update(extra)
    return JSONResponse(body, status_code=503 if failing else 200)
