"""Auth service: users, passwords (argon2id), RS256 access tokens, refresh tokens, logout."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import faults, hooks, variant
from .common import (
    AUTH_SCHEMA,
    EXCEPTION_HANDLERS,
    BodyLimit,
    authenticate,
    create_pool,
    ensure_schema,
    error,
    health,
    json_object,
    unauthorized,
)
from .config import REVOCATION_CHANNEL, Settings
from .tokens import Signer, Verifier, generate_private_key_pem

# OWASP minimum for argon2id: cheap enough for hundreds of CI registrations, still a real hash.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LOGIN_FAILED = {"error": "invalid_credentials", "message": "email or password is wrong"}
REFRESH_FAILED = {
    "error": "invalid_refresh_token", "message": "refresh token is invalid, used, revoked or expired",
}
# Verifying against this when the email is unknown keeps both failure paths equally slow.
DUMMY_HASH = HASHER.hash("not-a-real-password-0")


def _hash_refresh(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()



class AuthService:
    def __init__(self, settings: Settings):
        self.settings = settings
        key_pem = (Path(settings.jwt_private_key_path).read_bytes() if settings.jwt_private_key_path
                   else generate_private_key_pem())  # a new key per start unless one was given
        self.signer = Signer(key_pem, settings.issuer, settings.audience, settings.access_token_ttl)
        self.verifier = Verifier(self.signer.verification_keys(), settings.issuer, settings.audience)
        self.pool: asyncpg.Pool | None = None
        self.redis: aioredis.Redis | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        faults.enable(self.settings.faults)
        variant.enable(self.settings.variant, self.settings.variant_seed)
        self.pool = variant.wrap_pool(
            await create_pool(self.settings.auth_database_url, self.settings.db_pool_size), "auth"
        )
        await ensure_schema(self.pool, AUTH_SCHEMA)
        # A blocking pool waits for a free connection under bursts instead of failing.
        self.redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            self.settings.redis_url, max_connections=50, timeout=10,
            # no CLIENT SETINFO: saves two round trips and a package-metadata read per connection
            lib_name=None, lib_version=None))
        try:
            yield
        finally:
            await self.redis.aclose()
            await self.redis.connection_pool.disconnect()
            await self.pool.close()

    async def health(self, request: Request) -> Response:
        return await health(self.pool, self.redis, {
            "service": "auth", "faults": faults.enabled(),
            "capabilities": {"fault_injection": [], "metrics": hooks.METRICS_PATH},
        })

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.signer.jwks(), headers={"Cache-Control": "public, max-age=300"})

    async def register(self, request: Request) -> Response:
        body = await json_object(request)
        if body is None:
            return error(422, "invalid_body", "send a JSON object {email, password}")
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not EMAIL_RE.match(email.strip()):
            return error(422, "invalid_email", "email must look like name@example.com")
        if not isinstance(password, str) or len(password) < 8:
            return error(422, "invalid_password", "password must be a string of at least 8 characters")
        password_hash = await asyncio.get_running_loop().run_in_executor(None, HASHER.hash, password)
        user_id = uuid.uuid4()
        try:
            await self.pool.execute(
                "INSERT INTO users (user_id, email, password_hash) VALUES ($1, $2, $3)",
                user_id, email.strip().lower(), password_hash,
            )
        except asyncpg.UniqueViolationError:
            return error(409, "email_taken", "a user with this email already exists")
        return JSONResponse({"user_id": str(user_id)}, status_code=201)

    async def login(self, request: Request) -> Response:
        body = await json_object(request) or {}
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            return JSONResponse(LOGIN_FAILED, status_code=401)
        row = await self.pool.fetchrow(
            "SELECT user_id, password_hash FROM users WHERE email = $1", email.strip().lower()
        )
        if row is None and faults.on("login_enumeration"):
            return JSONResponse(LOGIN_FAILED, status_code=401)  # the bug: no dummy verification, so fast
        ok = await asyncio.get_running_loop().run_in_executor(
            None, _password_matches, row["password_hash"] if row else DUMMY_HASH, password
        )
        if row is None or not ok:
            return JSONResponse(LOGIN_FAILED, status_code=401)
        return JSONResponse(await self._token_pair(str(row["user_id"]), uuid.uuid4()))

    async def _token_pair(self, user_id: str, family_id: uuid.UUID) -> dict:
        access_token, _ = self.signer.issue(user_id, str(family_id))
        refresh_token = secrets.token_urlsafe(32)
        expires_at = datetime.now(timezone.utc) + timedelta(seconds=self.settings.refresh_token_ttl)
        await self.pool.execute(
            "INSERT INTO refresh_tokens (token_id, user_id, family_id, token_hash, expires_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            uuid.uuid4(), uuid.UUID(user_id), family_id, _hash_refresh(refresh_token), expires_at,
        )
        return {
            "access_token": access_token, "refresh_token": refresh_token, "token_type": "bearer",
            "expires_in": self.settings.access_token_ttl,
        }

    async def refresh(self, request: Request) -> Response:
        body = await json_object(request) or {}
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            return JSONResponse(REFRESH_FAILED, status_code=401)
        token_hash = _hash_refresh(token)
        if faults.on("refresh_race"):
            pair = await self._refresh_check_then_update(token_hash)
            if pair is not None:
                return pair
            row = None
        elif faults.on("refresh_reuse"):
            # The bug: "is it ours and not expired?" - used_at is recorded but never checked.
            row = await self.pool.fetchrow(
                "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1 AND revoked_at IS NULL "
                "AND expires_at > now() RETURNING user_id, family_id", token_hash,
            )
        else:
            row = await self.pool.fetchrow(
                "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL "
                "AND revoked_at IS NULL AND expires_at > now() RETURNING user_id, family_id", token_hash,
            )
        if row is None:
            reused = await self.pool.fetchval(
                "SELECT user_id FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NOT NULL", token_hash
            )
            if reused is not None:
                # Reuse means the token was stolen or replayed: revoke every refresh token of the user.
                await self.pool.execute(
                    "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
                    reused,
                )
            return JSONResponse(REFRESH_FAILED, status_code=401)
        return JSONResponse(await self._token_pair(str(row["user_id"]), row["family_id"]))

    async def _refresh_check_then_update(self, token_hash: str) -> dict | None:
        # The bug: "is it unused?", "mint the new pair" and "mark the old one used" are separate
        # statements, so parallel refreshes all pass the check before any of them marks the token.
        row = await self.pool.fetchrow(
            "SELECT token_id, user_id, family_id FROM refresh_tokens WHERE token_hash = $1 "
            "AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()", token_hash,
        )
        if row is None:
            return None
        await self.pool.fetchval("SELECT email FROM users WHERE user_id = $1", row["user_id"])
        pair = await self._token_pair(str(row["user_id"]), row["family_id"])
        await self.pool.execute(
            "UPDATE refresh_tokens SET used_at = now() WHERE token_id = $1", row["token_id"]
        )
        return JSONResponse(pair)

    async def logout(self, request: Request) -> Response:
        claims = await authenticate(request, self.verifier, self.redis)
        if claims is None:
            return unauthorized()
        if not faults.on("logout_no_revoke"):
            ttl = max(1, int(claims.get("exp", time.time() + 1) - time.time()) + 1)
            jti = claims["jti"]
            await self.redis.set(variant.key("revoked", jti), claims["sub"], ex=ttl)
            await self.redis.publish(REVOCATION_CHANNEL, jti)
        if not faults.on("logout_keeps_refresh"):
            await self._end_session(claims)
        return Response(status_code=204)

    async def _end_session(self, claims: dict) -> None:
        """Revoke the refresh-token family of the login this access token belongs to (its ``sid``):
        after logout no refresh token of that session mints a new access token.  Other logins of
        the same user (other devices) keep their sessions."""
        try:
            family_id, user_id = uuid.UUID(str(claims.get("sid"))), uuid.UUID(str(claims["sub"]))
        except ValueError:
            return  # a token without a session (not issued by login or refresh): nothing to end
        await self.pool.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND user_id = $2 "
            "AND revoked_at IS NULL", family_id, user_id,
        )

    async def me(self, request: Request) -> Response:
        claims = await authenticate(request, self.verifier, self.redis)
        if claims is None:
            return unauthorized()
        try:
            user_id = uuid.UUID(str(claims["sub"]))
        except ValueError:
            return unauthorized()
        row = await self.pool.fetchrow("SELECT user_id, email FROM users WHERE user_id = $1", user_id)
        if row is None:
            return unauthorized()
        return JSONResponse({"user_id": str(row["user_id"]), "email": row["email"]})


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return HASHER.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


def use_fast_password_hash() -> None:
    """Benchmarks only (``--fast-password-hash``): argon2id at 1 MiB / 1 pass, so registering
    thousands of load users takes seconds; what the benchmarks measure comes after the logins."""
    global HASHER, DUMMY_HASH
    HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    DUMMY_HASH = HASHER.hash("not-a-real-password-0")


def create_app(settings: Settings) -> Starlette:
    if settings.fast_password_hash:
        use_fast_password_hash()
    service = AuthService(settings)
    return Starlette(
        routes=[
            Route("/health", service.health),
            Route(hooks.METRICS_PATH, hooks.prometheus_metrics),
            Route("/.well-known/jwks.json", service.jwks),
            Route("/auth/register", service.register, methods=["POST"]),
            Route("/auth/login", service.login, methods=["POST"]),
            Route("/auth/refresh", service.refresh, methods=["POST"]),
            Route("/auth/logout", service.logout, methods=["POST"]),
            Route("/auth/me", service.me),
        ],
        lifespan=service.lifespan,
        middleware=[Middleware(BodyLimit, limit=settings.max_body_bytes)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
