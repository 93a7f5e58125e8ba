"""``POST /workspaces``: one operation over three databases, all or nothing, by two-phase commit.

Creating a workspace writes

1. the auth database: the user's workspace count (``user_workspace_counts``),
2. the backend database: the workspace row (``workspaces``),
3. the analytics event store: a ``workspace_created`` event (``events``, in the
   PostgreSQL database ``analytics`` on the backend's server by default, or the
   one named by ``REFPLAT_ANALYTICS_DATABASE_URL``).

Each step runs in its own transaction on its own database and ends with
``PREPARE TRANSACTION 'ws:<workspace_id>:<step>'``: the step's writes are on
disk and its locks held, but nothing is visible yet.  Only when all three are
prepared does the coordinator run ``COMMIT PREPARED`` on each; when any step
fails, the open transaction is rolled back and every prepared one gets
``ROLLBACK PREPARED``.  A coordinator that dies between PREPARE and COMMIT
leaves prepared transactions behind; on start the service rolls back its own
leftovers (global ids ``ws:%`` on its databases), since none of them can have
been acknowledged to a client.  The server needs ``max_prepared_transactions``
> 0 (the embedded PostgreSQL is started with 50).

Failure injections (not bugs; the platform must still roll back):
``workspace_backend_fail`` makes step 2 fail, ``workspace_analytics_fail`` step 3,
for one request through the contract hook ``X-Crosstalk-Inject`` (``hooks.py``,
only with test hooks on) or for every request as fault switches of the same names.
The bug ``no_rollback`` commits each step on its own as it goes, so a later
failure leaves the earlier steps applied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
import uuid

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import faults, hooks
from .clickhouse_events import ClickHouseEvents
from .common import json_object, unauthorized

log = logging.getLogger("reference_platform.workspaces")

ANALYTICS_URL_ENV = "REFPLAT_ANALYTICS_DATABASE_URL"
AUTH_DDL = """
CREATE TABLE IF NOT EXISTS user_workspace_counts (
    user_id uuid PRIMARY KEY,
    workspace_count int NOT NULL DEFAULT 0 CHECK (workspace_count >= 0)
);
"""
BACKEND_DDL = """
CREATE TABLE IF NOT EXISTS workspaces (
    workspace_id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS workspaces_user ON workspaces(user_id);
"""
ANALYTICS_DDL = """
CREATE TABLE IF NOT EXISTS events (
    event_id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    kind text NOT NULL,
    workspace_id uuid NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, kind);
"""
NAME_MAX = 100


class StepFailed(Exception):
    def __init__(self, step: str, reason: str):
        super().__init__(f"{step} step failed: {reason}")
        self.step = step
        self.reason = reason


def analytics_url(backend_database_url: str) -> str:
    configured = os.environ.get(ANALYTICS_URL_ENV)
    if configured:
        return configured
    parts = urllib.parse.urlsplit(backend_database_url)
    return urllib.parse.urlunsplit(parts._replace(path="/analytics"))


async def _ensure_database(url: str, maintenance_url: str) -> None:
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(maintenance_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class WorkspaceService:
    def __init__(self, auth_url: str, backend_url: str, authenticate, test_hooks: bool = False):
        self.test_hooks = test_hooks
        self.urls = {"auth": auth_url, "backend": backend_url, "analytics": analytics_url(backend_url)}
        self.authenticate = authenticate
        self.pools: dict[str, asyncpg.Pool] = {}
        # COMMIT/ROLLBACK PREPARED get their own connections: the prepared auth step holds the user's
        # row lock, so same-user transactions queued on that lock may hold every connection of the
        # step pool, and the coordinator must still be able to finish the one that holds the lock.
        self.decisions: dict[str, asyncpg.Pool] = {}
        self.clickhouse = ClickHouseEvents.from_environment()
        # With ClickHouse, analytics is not a two-phase participant (see clickhouse_events.py).
        self.prepared_steps = ("auth", "backend") if self.clickhouse else ("auth", "backend", "analytics")

    async def start(self) -> None:
        if self.clickhouse:
            await self.clickhouse.start()
        elif not os.environ.get(ANALYTICS_URL_ENV):
            await _ensure_database(self.urls["analytics"], self.urls["backend"])
        ddls = {"auth": AUTH_DDL, "backend": BACKEND_DDL, "analytics": ANALYTICS_DDL}
        for step in self.prepared_steps:
            ddl = ddls[step]
            pool = await asyncpg.create_pool(self.urls[step], min_size=1, max_size=10, command_timeout=10)
            self.pools[step] = pool
            self.decisions[step] = await asyncpg.create_pool(
                self.urls[step], min_size=1, max_size=4, command_timeout=10
            )
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock(424243)")
                try:
                    await conn.execute(ddl)
                    await self._recover(conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(424243)")

    @staticmethod
    async def _recover(conn: asyncpg.Connection) -> None:
        leftovers = await conn.fetch(
            "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'ws:%' AND database = current_database()"
        )
        for row in leftovers:
            log.warning("rolling back abandoned prepared transaction %s", row["gid"])
            with contextlib.suppress(asyncpg.PostgresError):
                await conn.execute(f"ROLLBACK PREPARED '{row['gid']}'")

    async def close(self) -> None:
        if self.clickhouse:
            await self.clickhouse.close()
        for pool in [*self.pools.values(), *self.decisions.values()]:
            await pool.close()

    # ------------------------------------------------------------------ REST
    async def create(self, request: Request) -> Response:
        user_id = await self.authenticate(request)
        if user_id is None:
            return unauthorized()
        body = await json_object(request) or {}
        name = body.get("name")
        if faults.on("identity_from_body"):
            # The bug (mass assignment): an owner named in the body wins over the token's subject.
            claimed = body.get("owner_id") or body.get("user_id")
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                user_id = uuid.UUID(str(claimed)) if claimed else user_id
        if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX:
            return JSONResponse(
                {"error": "invalid_name", "message": f'send {{"name": ...}} with 1 to {NAME_MAX} characters'},
                status_code=422,
            )
        try:
            inject = hooks.requested(request, self.test_hooks)
        except hooks.UnknownInjection as exc:
            return hooks.unknown_injection(exc)
        inject |= {name for name in hooks.INJECTIONS if faults.on(name)}
        workspace_id = uuid.uuid4()
        try:
            if faults.on("no_rollback"):
                await self._create_without_coordination(user_id, workspace_id, name.strip(), inject)
            else:
                await self._create_two_phase(user_id, workspace_id, name.strip(), inject)
        except StepFailed as exc:
            # the database's own error stays in the log: the body names the step, never an exception
            log.warning("workspace %s not created: %s", workspace_id, exc)
            message = f"{exc}" if faults.on("hostile_input_500") else f"the {exc.step} step failed"
            return JSONResponse(
                {
                    "error": "workspace_not_created",
                    "failed_step": exc.step,
                    "message": f"{message}; nothing was created",
                },
                status_code=503,
            )
        return JSONResponse({"workspace_id": str(workspace_id), "name": name.strip()}, status_code=201)

    async def list(self, request: Request) -> Response:
        user_id = await self.authenticate(request)
        if user_id is None:
            return unauthorized()
        rows = await self.pools["backend"].fetch(
            "SELECT workspace_id, name, created_at FROM workspaces WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
        return JSONResponse(
            [
                {
                    "workspace_id": str(r["workspace_id"]),
                    "name": r["name"],
                    "created_at": r["created_at"].isoformat(),
                }
                for r in rows
            ]
        )

    # ------------------------------------------------------------------ steps
    async def _write(
        self,
        step: str,
        conn: asyncpg.Connection,
        user_id: uuid.UUID,
        workspace_id: uuid.UUID,
        name: str,
        inject: frozenset[str],
    ) -> None:
        if step == "auth":
            await conn.execute(
                "INSERT INTO user_workspace_counts (user_id, workspace_count) VALUES ($1, 1) "
                "ON CONFLICT (user_id) DO UPDATE "
                "SET workspace_count = user_workspace_counts.workspace_count + 1",
                user_id,
            )
        elif step == "backend":
            await conn.execute(
                "INSERT INTO workspaces (workspace_id, user_id, name) VALUES ($1, $2, $3)",
                workspace_id,
                user_id,
                name,
            )
            if "workspace_backend_fail" in inject:
                raise StepFailed("backend", "injected failure after the workspace row was written")
        else:
            await conn.execute(
                "INSERT INTO events (event_id, user_id, kind, workspace_id, payload) "
                "VALUES ($1, $2, 'workspace_created', $3, jsonb_build_object('name', $4::text))",
                uuid.uuid4(),
                user_id,
                workspace_id,
                name,
            )
            if "workspace_analytics_fail" in inject:
                raise StepFailed("analytics", "injected failure after the event was written")

    async def _create_two_phase(
        self, user_id: uuid.UUID, workspace_id: uuid.UUID, name: str, inject: frozenset[str]
    ) -> None:
        prepared: list[tuple[str, str]] = []
        try:
            for step in self.prepared_steps:
                gid = f"ws:{workspace_id}:{step}"
                async with self.pools[step].acquire() as conn:
                    await conn.execute("BEGIN")
                    try:
                        await self._write(step, conn, user_id, workspace_id, name, inject)
                        await conn.execute(f"PREPARE TRANSACTION '{gid}'")
                    except BaseException as exc:
                        with contextlib.suppress(Exception):
                            await conn.execute("ROLLBACK")
                        if isinstance(exc, asyncpg.PostgresError):
                            raise StepFailed(step, f"{type(exc).__name__}: {exc}") from exc
                        raise
                prepared.append((step, gid))
            if self.clickhouse:
                await self._clickhouse_step(user_id, workspace_id, name, inject)
        except BaseException:
            if faults.on("prepared_xact_leak"):
                prepared = []  # the bug: only the open step is rolled back; the prepared ones are forgotten
            for step, gid in prepared:
                try:
                    await self.decisions[step].execute(f"ROLLBACK PREPARED '{gid}'")
                except Exception as exc:  # left for the recovery on the next start
                    log.error("ROLLBACK PREPARED %s failed: %s", gid, exc)
            raise
        try:
            for step, gid in prepared:
                await self.decisions[step].execute(f"COMMIT PREPARED '{gid}'")
        except Exception:
            if self.clickhouse:
                await self.clickhouse.compensate(workspace_id)
            raise

    async def _clickhouse_step(
        self, user_id: uuid.UUID, workspace_id: uuid.UUID, name: str, inject: frozenset[str]
    ) -> None:
        try:
            await self.clickhouse.insert(user_id, workspace_id, name)
        except Exception as exc:
            raise StepFailed("analytics", f"ClickHouse insert failed: {type(exc).__name__}: {exc}") from exc
        if "workspace_analytics_fail" in inject:
            await self.clickhouse.compensate(workspace_id)
            raise StepFailed("analytics", "injected failure after the event was written")

    async def _create_without_coordination(
        self, user_id: uuid.UUID, workspace_id: uuid.UUID, name: str, inject: frozenset[str]
    ) -> None:
        # The bug: each store commits on its own; a failing later step leaves the earlier ones applied.
        for step in self.prepared_steps:
            async with self.pools[step].acquire() as conn, conn.transaction():
                await self._write(step, conn, user_id, workspace_id, name, inject)
        if self.clickhouse:
            await self._clickhouse_step(user_id, workspace_id, name, inject)
