"""Pieces both services share: schemas, pools, JSON errors, bearer tokens."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import redis.asyncio as aioredis
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from . import variant
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


async def json_object(request: Request) -> dict | None:
    """The request body if it is a JSON object, else None (malformed JSON included)."""
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


UNAUTHORIZED = {"error": "unauthorized", "message": "a valid Bearer access token is required"}


def unauthorized() -> JSONResponse:
    # One body for every reason, so a client learns nothing about why a token failed.
    return JSONResponse(UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
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
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), 2)
    except Exception as exc:
        body["postgres"] = f"error: {type(exc).__name__}"
    try:
        await asyncio.wait_for(redis.ping(), 2)
    except Exception as exc:
        body["redis"] = f"error: {type(exc).__name__}"
    failing = [name for name in ("postgres", "redis") if body[name] != "ok"]
    if failing:
        body["status"] = f"unavailable: {', '.join(failing)}"
    body.update(extra)
    return JSONResponse(body, status_code=503 if failing else 200)
