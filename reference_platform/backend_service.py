"""Backend service: threads over REST and the agent event stream over WebSocket."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from . import agent, faults, hooks, variant
from .cache import ClientGone, ThreadListCache, unless_client_leaves
from .common import (
    BACKEND_SCHEMA,
    EXCEPTION_HANDLERS,
    BadInput,
    BodyLimit,
    authenticate,
    check_json_value,
    create_pool,
    ensure_schema,
    health,
    json_object,
    storable,
    unauthorized,
)
from .config import REVOCATION_CHANNEL, Settings
from .tokens import TokenError, Verifier, keys_from_jwks
from .workspaces import WorkspaceService

log = logging.getLogger("reference_platform.backend")

NOT_FOUND = {"error": "not_found", "message": "thread not found"}
TITLE_CHARS = 60
CTX_TTL_SECONDS = 3600
UNFAIR_SLOWDOWN = 8  # unfair_scheduling: how many times slower the held-back half of the users is served
# Token bucket per user in Redis; milli-tokens keep the state integral.
RATE_LIMIT_LUA = """
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'mtokens', 'ts')
local mtokens = tonumber(state[1]) or burst * 1000
local ts = tonumber(state[2]) or now
mtokens = math.min(burst * 1000, mtokens + math.floor((now - ts) * rate))
local allowed = 0
if mtokens >= 1000 then mtokens = mtokens - 1000; allowed = 1 end
redis.call('HSET', KEYS[1], 'mtokens', mtokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return allowed
"""

BEGIN_NEW_THREAD = """
WITH t AS (INSERT INTO threads (thread_id, user_id, title, message_count) VALUES ($1, $2, $3, 1)
           RETURNING thread_id),
m AS (INSERT INTO messages (message_id, thread_id, user_id, role, content, run_id, client_message_id)
      SELECT $4, thread_id, $2, 'user', $5, $6, $7 FROM t),
r AS (INSERT INTO runs (run_id, thread_id, user_id, status, agent)
      SELECT $6, thread_id, $2, 'running', 'triage' FROM t)
SELECT thread_id FROM t
"""
BEGIN_IN_THREAD = """
WITH t AS (UPDATE threads SET message_count = message_count + 1 WHERE thread_id = $1 AND {owner}
           RETURNING thread_id),
m AS (INSERT INTO messages (message_id, thread_id, user_id, role, content, run_id, client_message_id)
      SELECT $3, thread_id, $2, 'user', $4, $5, $6 FROM t),
r AS (INSERT INTO runs (run_id, thread_id, user_id, status, agent)
      SELECT $5, thread_id, $2, 'running', 'triage' FROM t)
SELECT thread_id FROM t
"""
OWNER_CHECK = "user_id = $2"
# bola_ws: the ownership predicate is lost; $2 must still be typed for the inserts.
NO_OWNER_CHECK = "$2::uuid IS NOT NULL"
FINISH_RUN = """
WITH m AS (INSERT INTO messages (message_id, thread_id, user_id, role, content, run_id, client_message_id)
           VALUES ($1, $2, $3, 'agent', $4, $5, $6)),
t AS (UPDATE threads SET message_count = message_count + 1 WHERE thread_id = $2)
UPDATE runs SET status = 'completed', agent = $7, completed_at = now() WHERE run_id = $5
"""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sql_literal(value: object) -> str:
    return "NULL" if value is None else f"'{value}'"


def _uuid_or_none(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _storable(text: str) -> bool:
    # NUL characters and lone surrogates (JSON "\ud800" escapes) cannot be stored
    return storable(text) or faults.on("hostile_input_500")


@dataclass(eq=False)
class Connection:
    websocket: WebSocket
    user_id: str
    jti: str
    connection_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    connected_at: str = field(default_factory=_now_iso)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runs: set = field(default_factory=set)
    # Frames recently sent, kept for diagnostics; this is what a leaked entry keeps alive.
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    closed: bool = False

    async def send(self, text: str) -> None:
        if self.closed:
            return
        self.recent.append(text)
        async with self.send_lock:
            try:
                await self.websocket.send_text(text)
            except Exception:
                self.closed = True


@dataclass(eq=False)
class Run:
    conn: Connection
    run_id: str
    thread_id: str | None
    client_message_id: str
    content: str
    number: int
    step_ms: int
    seq: int = 0
    held: str | None = None
    new_thread: bool = False
    owner: str | None = None  # who the stored rows belong to: the socket's user (identity_from_frame aside)
    count_seen: int | None = None  # only kept by the counter_two_writers fault


class BackendService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.unfair_order: dict[str, bool] = {}  # unfair_scheduling only
        self.pool: asyncpg.Pool | None = None
        self.redis: aioredis.Redis | None = None
        self.verifier: Verifier | None = None
        self.registry: dict[str, Connection] = {}
        self.active_websockets = 0
        self.runs_in_flight = 0
        self.runs_started = 0
        self.current_connection: Connection | None = None  # only read by the crosstalk fault
        self._background: list[asyncio.Task] = []
        self._tasks: set[asyncio.Task] = set()
        self._rate_script = None
        self.thread_cache = ThreadListCache(settings.redis_url)
        hooks.expose_connection_gauges(lambda: self.active_websockets, lambda: len(self.registry))
        self.workspaces = WorkspaceService(
            settings.auth_database_url, settings.backend_database_url, self._user, settings.test_hooks,
            settings.analytics_db,
        )

    # ---------------------------------------------------------------- lifecycle
    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        faults.enable(self.settings.faults)
        variant.enable(self.settings.variant, self.settings.variant_seed)
        self.pool = variant.wrap_pool(
            await create_pool(self.settings.backend_database_url, self.settings.db_pool_size), "backend"
        )
        await ensure_schema(self.pool, BACKEND_SCHEMA)
        # A blocking pool waits for a free connection under bursts instead of failing.
        self.redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            self.settings.redis_url, max_connections=self.settings.redis_pool_size, timeout=10,
            # no CLIENT SETINFO: saves two round trips and a package-metadata read per connection
            lib_name=None, lib_version=None))
        self._rate_script = self.redis.register_script(RATE_LIMIT_LUA)
        self.verifier = Verifier(await self._fetch_jwks(), self.settings.issuer, self.settings.audience)
        self._background.append(asyncio.create_task(self._listen_for_revocations()))
        await self.thread_cache.start()
        await self.workspaces.start()
        try:
            yield
        finally:
            await self.workspaces.close()
            await self.thread_cache.close()
            for task in self._background:
                task.cancel()
            for conn in list(self.registry.values()):
                for task in list(conn.runs):
                    task.cancel()
            await self.redis.aclose()
            await self.redis.connection_pool.disconnect()
            await self.pool.close()

    async def _fetch_jwks(self) -> dict:
        url = f"{self.settings.auth_url}/.well-known/jwks.json"
        deadline = time.monotonic() + 20
        while True:
            try:
                body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())
                return keys_from_jwks(json.loads(body))
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not fetch the auth service's JWKS from {url}: {exc}") from exc
                await asyncio.sleep(0.1)

    async def _listen_for_revocations(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(REVOCATION_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    jti = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
                    for conn in list(self.registry.values()):
                        if conn.jti == jti and not conn.closed:
                            self._spawn(self._close(conn, 4401, "token revoked"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("revocation listener: %s; resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        conn.closed = True
        async with conn.send_lock:
            with contextlib.suppress(Exception):
                await conn.websocket.close(code=code, reason=reason)

    # ---------------------------------------------------------------- REST
    async def health(self, request: Request) -> Response:
        return await health(self.pool, self.redis, {
            "service": "backend", "faults": faults.enabled(),
            "capabilities": hooks.capabilities(self.settings.test_hooks),
        })

    async def metrics(self, request: Request) -> Response:
        try:
            with open("/proc/self/statm") as statm:
                rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            rss = 0
        return JSONResponse({
            "active_websockets": self.active_websockets,
            "tracked_connections": len(self.registry),
            "runs_in_flight": self.runs_in_flight,
            "runs_started_total": self.runs_started,
            "db_pool_size": self.pool.get_size() if self.pool else 0,
            "pid": os.getpid(),
            "rss_bytes": rss,
            "faults": faults.enabled(),
        })

    async def _user(self, request: Request) -> uuid.UUID | None:
        claims = await authenticate(request, self.verifier, self.redis)
        return _uuid_or_none(claims.get("sub")) if claims else None

    async def _callers_thread(self, request: Request) -> asyncpg.Record | Response:
        """The path's thread if the caller owns it, else the 401 or 404 response to send."""
        user_id = await self._user(request)
        if user_id is None:
            return unauthorized()
        row = await self._owned_thread(request.path_params["thread_id"], user_id)
        return JSONResponse(NOT_FOUND, status_code=404) if row is None else row

    async def _owned_thread(self, thread_id: str, user_id: uuid.UUID) -> asyncpg.Record | None:
        tid = _uuid_or_none(thread_id)
        if tid is None:
            return None
        if faults.on("bola_rest"):
            return await self.pool.fetchrow(
                "SELECT thread_id, title, message_count, created_at FROM threads WHERE thread_id = $1", tid
            )
        return await self.pool.fetchrow(
            "SELECT thread_id, title, message_count, created_at FROM threads "
            "WHERE thread_id = $1 AND user_id = $2",
            tid, user_id,
        )

    async def list_threads(self, request: Request) -> Response:
        user_id = await self._user(request)
        if user_id is None:
            return unauthorized()
        try:
            threads = await unless_client_leaves(request.receive, self._thread_list(user_id))
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse(threads)

    async def _thread_list(self, user_id: uuid.UUID) -> list:
        cached, generation = await self.thread_cache.get(str(user_id))
        if cached is not None:
            return cached
        rows = await self.pool.fetch(
            "SELECT thread_id, title, created_at FROM threads WHERE user_id = $1 ORDER BY created_at DESC",
            user_id,
        )
        threads = [
            {"thread_id": str(r["thread_id"]), "title": r["title"], "created_at": r["created_at"].isoformat()}
            for r in rows
        ]
        await self.thread_cache.store(str(user_id), generation, threads)
        return threads

    async def add_message(self, request: Request) -> Response:
        """POST /threads/{id}/messages {content}: append a user note without an agent run."""
        user_id = await self._user(request)
        if user_id is None:
            return unauthorized()
        content = (await json_object(request) or {}).get("content")
        if not isinstance(content, str) or not content:
            return JSONResponse(
                {"error": "missing_field", "message": "field 'content' must be a non-empty string"},
                status_code=422,
            )
        tid = _uuid_or_none(request.path_params["thread_id"])
        if tid is None:
            return JSONResponse(NOT_FOUND, status_code=404)
        message_id = uuid.uuid4()
        if faults.on("lost_update"):
            # The bug: read the count, do other work, write back count + 1; parallel writers overwrite.
            count = await self.pool.fetchval(
                "SELECT message_count FROM threads WHERE thread_id = $1 AND user_id = $2", tid, user_id
            )
            if count is None:
                return JSONResponse(NOT_FOUND, status_code=404)
            await self.pool.execute(
                "INSERT INTO messages (message_id, thread_id, user_id, role, content) "
                "VALUES ($1, $2, $3, 'user', $4)",
                message_id, tid, user_id, content,
            )
            await self.pool.execute(
                "UPDATE threads SET message_count = $2 WHERE thread_id = $1", tid, count + 1
            )
            count += 1
        else:
            count = await self.pool.fetchval(
                "WITH t AS (UPDATE threads SET message_count = message_count + 1 WHERE thread_id = $1 "
                "AND user_id = $2 RETURNING thread_id, message_count), "
                "m AS (INSERT INTO messages (message_id, thread_id, user_id, role, content) "
                "SELECT $3, thread_id, $2, 'user', $4 FROM t) SELECT message_count FROM t",
                tid, user_id, message_id, content,
            )
            if count is None:
                return JSONResponse(NOT_FOUND, status_code=404)
        return JSONResponse({"message_id": str(message_id), "thread_id": str(tid), "message_count": count},
                            status_code=201)

    async def get_thread(self, request: Request) -> Response:
        row = await self._callers_thread(request)
        if isinstance(row, Response):
            return row
        return JSONResponse({
            "thread_id": str(row["thread_id"]), "title": row["title"], "message_count": row["message_count"],
            "created_at": row["created_at"].isoformat(),
        })

    async def thread_messages(self, request: Request) -> Response:
        row = await self._callers_thread(request)
        if isinstance(row, Response):
            return row
        rows = await self.pool.fetch(
            "SELECT message_id, user_id, role, content, run_id, client_message_id, created_at FROM messages "
            "WHERE thread_id = $1 ORDER BY created_at, message_id", row["thread_id"],
        )
        return JSONResponse([
            {
                "message_id": str(r["message_id"]), "role": r["role"], "content": r["content"],
                "run_id": str(r["run_id"]) if r["run_id"] else None,
                "client_message_id": r["client_message_id"], "created_at": r["created_at"].isoformat(),
            }
            for r in rows
        ])

    async def delete_thread(self, request: Request) -> Response:
        user_id = await self._user(request)
        if user_id is None:
            return unauthorized()
        tid = _uuid_or_none(request.path_params["thread_id"])
        if tid is None:
            return JSONResponse(NOT_FOUND, status_code=404)
        if faults.on("bola_rest"):
            owner = await self.pool.fetchval(
                "DELETE FROM threads WHERE thread_id = $1 RETURNING user_id", tid
            )
        else:
            owner = await self.pool.fetchval(
                "DELETE FROM threads WHERE thread_id = $1 AND user_id = $2 RETURNING user_id", tid, user_id
            )
        if owner is None:
            return JSONResponse(NOT_FOUND, status_code=404)
        await self.redis.delete(variant.key("ctx", owner, tid))
        if not faults.on("stale_list_after_delete"):  # the bug: the cached list keeps the thread
            await self.thread_cache.invalidate(str(owner))
        return Response(status_code=204)

    # ---------------------------------------------------------------- WebSocket
    # complexity accepted: the handshake's refusal paths (origin, token, revocation, limits)
    # read best as one sequence
    async def websocket(self, websocket: WebSocket) -> None:  # noqa: C901
        origin = websocket.headers.get("origin")
        if origin is not None and origin not in self.settings.allowed_origins and not faults.on(
            "ws_origin_unchecked"
        ):
            await websocket.send_denial_response(JSONResponse(
                {"error": "forbidden_origin", "message": "Origin is not allowed"}, status_code=403
            ))
            return
        claims = await authenticate(websocket, self.verifier, self.redis)
        if claims is None and faults.on("token_in_query"):
            # The bug: browsers cannot set headers on a WebSocket, so a token in the URL is taken too;
            # its signature is verified, but the revocation denylist is never asked.
            query_token = websocket.query_params.get("access_token") or websocket.query_params.get("token")
            with contextlib.suppress(TokenError):
                claims = self.verifier.verify(query_token) if query_token else None
        user_id = _uuid_or_none(claims.get("sub")) if claims else None
        if user_id is None:
            await websocket.send_denial_response(unauthorized())
            return
        await websocket.accept()
        conn = Connection(websocket, str(user_id), str(claims["jti"]))
        self.registry[conn.connection_id] = conn
        self.active_websockets += 1
        session_key = variant.key("session", conn.user_id, conn.connection_id)
        try:
            await self.redis.hset(session_key, mapping={
                "user_id": conn.user_id, "connection_id": conn.connection_id,
                "connected_at": conn.connected_at,
            })
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    try:
                        text = (message.get("bytes") or b"").decode("utf-8")
                    except UnicodeDecodeError:
                        await self._send_error(conn, "invalid_json", "the frame is not valid UTF-8", None)
                        continue
                try:
                    await self._handle_frame(conn, text)
                except Exception as exc:
                    if faults.on("hostile_input_500"):
                        raise
                    # one bad frame never costs the socket; the cause goes to the log, not the client
                    log.error("frame on %s failed", conn.connection_id, exc_info=exc)
                    await self._send_error(conn, "internal_error", "the frame could not be handled", None)
        except Exception as exc:
            log.debug("websocket %s ended: %s", conn.connection_id, exc)
        finally:
            conn.closed = True
            self.active_websockets -= 1
            # Before any await, so /metrics never shows a closed socket as still tracked.
            if not faults.on("connection_leak"):
                self.registry.pop(conn.connection_id, None)
            if not faults.on("session_leak"):
                with contextlib.suppress(Exception):
                    await self.redis.delete(session_key)

    async def _send_error(self, conn: Connection, code: str, message: str, client_message_id: object) -> None:
        await conn.send(json.dumps({
            "type": "error", "code": code, "message": message, "client_message_id": client_message_id,
        }))

    async def _rate_limited(self, conn: Connection) -> bool:
        if faults.on("no_rate_limit"):
            return False
        allowed = await self._rate_script(
            keys=[variant.key("ratelimit", conn.user_id)],
            args=[self.settings.rate_limit_per_second, self.settings.rate_limit_burst,
                  int(time.time() * 1000)],
        )
        return not allowed

    # complexity accepted: one flat dispatch over the frame types of the contract, each with its fault switch
    async def _handle_frame(self, conn: Connection, text: str) -> None:  # noqa: C901
        limit = self.settings.max_frame_bytes
        if not faults.on("no_frame_limit") and len(text) > limit // 4 and len(text.encode()) > limit:
            await self._send_error(conn, "frame_too_large", f"frames are limited to {limit} bytes", None)
            return
        if await self._rate_limited(conn):
            await self._send_error(
                conn, "rate_limited",
                f"more than {self.settings.rate_limit_per_second:g} messages per second; slow down", None,
            )
            return
        try:
            frame = json.loads(text)
            if not faults.on("hostile_input_500"):
                check_json_value(frame, text=False)
        except ValueError:
            await self._send_error(conn, "invalid_json", "the frame is not valid JSON", None)
            return
        except (RecursionError, BadInput):
            if faults.on("hostile_input_500"):
                raise
            await self._send_error(conn, "invalid_json", "the frame's JSON nests too deeply", None)
            return
        if not isinstance(frame, dict):
            await self._send_error(conn, "invalid_frame", "the frame must be a JSON object", None)
            return
        cmid = frame.get("client_message_id")
        if frame.get("type") != "user_message":
            await self._send_error(conn, "unknown_type", "type must be 'user_message'", cmid)
            return
        for name in ("content", "client_message_id"):
            if not isinstance(frame.get(name), str) or not frame[name]:
                await self._send_error(
                    conn, "missing_field", f"field '{name}' must be a non-empty string", cmid
                )
                return
        for name in ("content", "client_message_id"):
            if not _storable(frame[name]):
                await self._send_error(
                    conn, "invalid_content",
                    f"{name} must be valid Unicode without NUL characters or lone surrogates "
                    "(PostgreSQL text cannot hold them)",
                    cmid if name == "content" else None,
                )
                return
        thread_id = frame.get("thread_id")
        if thread_id is not None and _uuid_or_none(thread_id) is None:
            await self._send_error(conn, "thread_not_found", "thread not found", cmid)
            return
        self.runs_started += 1
        run = Run(
            conn, str(uuid.uuid4()), str(thread_id) if thread_id else None, cmid, frame["content"],
            self.runs_started, agent.step_delay_ms(frame["content"], self.settings.agent_step_ms),
        )
        if faults.on("identity_from_frame") and frame.get("user_id"):
            run.owner = str(frame["user_id"])  # the bug (mass assignment): the frame names the owner
        if faults.on("unfair_scheduling") and self._held_back(conn.user_id):
            # The bug: a tenant-priority scheduler that serves half the users at a fraction of the pace.
            run.step_ms = max(run.step_ms, 1) * UNFAIR_SLOWDOWN
        task = asyncio.create_task(self._run_agent(run))
        conn.runs.add(task)
        task.add_done_callback(conn.runs.discard)

    # ---------------------------------------------------------------- agent runs
    async def _emit(self, run: Run, event_type: str, payload: dict) -> None:
        run.seq += 1
        text = json.dumps(variant.event({
            "type": event_type, "run_id": run.run_id, "thread_id": run.thread_id,
            "client_message_id": run.client_message_id, "user_id": run.conn.user_id, "seq": run.seq,
            "timestamp": time.time() if faults.on("event_timestamp_drift") else _now_iso(),
            "payload": payload,
        }))
        every_third = run.number % 3 == 0
        if event_type == "tool_completed" and every_third and faults.on("drop_event"):
            return
        if event_type == "tool_executing" and every_third and faults.on("reorder_events"):
            run.held = text
            return
        target = self.current_connection if faults.on("crosstalk") else run.conn
        await target.send(text)
        if run.held is not None and event_type == "tool_completed":
            held, run.held = run.held, None
            await target.send(held)

    async def _step(self, run: Run) -> None:
        if run.step_ms:
            await asyncio.sleep(run.step_ms / 1000)

    def _ctx_key(self, run: Run) -> str:
        if faults.on("shared_context"):
            return variant.key("ctx_shared")
        return variant.key("ctx", run.conn.user_id, run.thread_id)

    async def _begin(self, run: Run) -> bool:
        user_id = uuid.UUID(run.owner or run.conn.user_id)
        message_id, run_id = uuid.uuid4(), uuid.UUID(run.run_id)
        new_thread = run.thread_id is None
        thread_id = uuid.uuid4() if new_thread else uuid.UUID(run.thread_id)
        if new_thread:
            sql = BEGIN_NEW_THREAD
            values = [thread_id, user_id, run.content[:TITLE_CHARS], message_id, run.content, run_id,
                      run.client_message_id]
        else:
            sql = BEGIN_IN_THREAD.format(owner=NO_OWNER_CHECK if faults.on("bola_ws") else OWNER_CHECK)
            values = [thread_id, user_id, message_id, run.content, run_id, run.client_message_id]
        if faults.on("sql_concat"):
            # The bug: values pasted into the SQL text; a quote in the content breaks out of the literal.
            for index in range(len(values), 0, -1):
                sql = sql.replace(f"${index}", _sql_literal(values[index - 1]))
            async with self.pool.acquire() as db:
                rows = await db.fetch(sql)
            row = rows[0][0] if rows else None
        else:
            row = await self.pool.fetchval(sql, *values)
        if row is None:
            return False
        run.thread_id, run.new_thread = str(thread_id), new_thread
        if new_thread:
            await self._invalidate_thread_list(str(user_id))
        if faults.on("counter_two_writers"):
            run.count_seen = await self.pool.fetchval(
                "SELECT message_count FROM threads WHERE thread_id = $1", thread_id
            )
        return True

    async def _invalidate_thread_list(self, user_id: str) -> None:
        """ThreadListCache.invalidate (bump the generation, then delete) in one round trip on the
        main Redis client: the cache's own link is slow and 4 connections wide on purpose (it models
        the cancellation leak for reads), and writes through it capped new threads at ~60/s."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(ThreadListCache.generation_key(user_id))
            pipe.delete(ThreadListCache.key(user_id))
            await pipe.execute()

    async def _history(self, run: Run) -> list[str]:
        cached = await self.redis.get(self._ctx_key(run))
        if cached is not None:
            return json.loads(cached)
        if run.new_thread:
            return []  # nothing earlier in a thread this run just created
        rows = await self.pool.fetch(
            "SELECT content FROM messages WHERE thread_id = $1 AND user_id = $2 AND role = 'user' "
            "AND run_id <> $3 ORDER BY created_at",
            uuid.UUID(run.thread_id), uuid.UUID(run.conn.user_id), uuid.UUID(run.run_id),
        )
        return [r["content"] for r in rows]

    def _held_back(self, user_id: str) -> bool:
        # unfair_scheduling: users alternate between favoured and held back, in first-seen order
        return self.unfair_order.setdefault(user_id, len(self.unfair_order) % 2 == 1)

    async def _run_agent(self, run: Run) -> None:
        self.runs_in_flight += 1
        self.current_connection = run.conn
        specialist = "triage"
        try:
            if faults.on("scan_all_keys"):
                # The bug: SCAN MATCH walks every key of every user (10 per round trip by default).
                pattern = variant.key("session", run.conn.user_id, "*")
                open_sessions = [key async for key in self.redis.scan_iter(match=pattern)]
                log.debug("run %s: %d open session(s)", run.run_id, len(open_sessions))
            if variant.on():
                await variant.run_agent(self, run, agent)
                return
            if not await self._begin(run):
                await self._send_error(
                    run.conn, "thread_not_found", "thread not found", run.client_message_id
                )
                return
            await self._emit(run, "agent_started", {"agent": "triage"})
            specialist = agent.choose_specialist(run.content)
            await self._step(run)
            await self._emit(
                run, "agent_thinking", {"agent": "triage", "thought": f"routing to {specialist}"}
            )
            await self._step(run)
            await self._emit(run, "agent_thinking", {
                "agent": specialist, "handoff_from": "triage",
                "thought": f"{specialist} specialist looking up this thread's history",
            })
            await self._step(run)
            call_id = f"call_{uuid.uuid4().hex[:12]}"
            await self._emit(run, "tool_executing", {
                "agent": specialist, "tool": agent.TOOL, "tool_call_id": call_id,
                "arguments": {"thread_id": run.thread_id},
            })
            history = await self._history(run)
            await self._step(run)
            await self._emit(run, "tool_completed", {
                "agent": specialist, "tool": agent.TOOL, "tool_call_id": call_id,
                "result": {"earlier_messages": history},
            })
            await self._step(run)
            if agent.wants_failure(run.content):
                await self._fail(run, specialist, "the agent failed on purpose ([[fail]] directive)")
                return
            answer = agent.compose_answer(specialist, run.content, history)
            answer_thread = uuid.UUID(run.thread_id)
            if faults.on("message_wrong_thread"):
                # The bug: the answer is filed under the user's newest thread, not the run's own.
                answer_thread = await self.pool.fetchval(
                    "SELECT thread_id FROM threads WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1",
                    uuid.UUID(run.conn.user_id),
                ) or answer_thread
            await self.pool.execute(
                FINISH_RUN, uuid.uuid4(), answer_thread, uuid.UUID(run.conn.user_id), answer,
                uuid.UUID(run.run_id), run.client_message_id, specialist,
            )
            if run.count_seen is not None:
                # counter_two_writers: the count read after the question was stored, + 1, written back
                await self.pool.execute(
                    "UPDATE threads SET message_count = $2 WHERE thread_id = $1",
                    answer_thread, run.count_seen + 1,
                )
            await self.redis.set(self._ctx_key(run), json.dumps([*history, run.content]), ex=CTX_TTL_SECONDS)
            await self._emit(run, "agent_completed", {"agent": specialist, "response": answer})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("run %s failed: %s", run.run_id, exc)
            detail = f": {type(exc).__name__}" if faults.on("hostile_input_500") else ""
            await self._fail(run, specialist, f"internal error{detail}")
        finally:
            self.runs_in_flight -= 1

    async def _fail(self, run: Run, specialist: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.pool.execute(
                "UPDATE runs SET status = 'failed', agent = $2, completed_at = now() WHERE run_id = $1",
                uuid.UUID(run.run_id), specialist,
            )
        await self._emit(run, "agent_error", {"agent": specialist, "message": message})


def create_app(settings: Settings) -> Starlette:
    service = BackendService(settings)
    return Starlette(
        routes=[
            Route("/health", service.health),
            Route("/metrics", service.metrics),
            Route(hooks.METRICS_PATH, hooks.prometheus_metrics),
            Route("/threads", service.list_threads),
            Route("/threads/{thread_id}", service.get_thread),
            Route("/threads/{thread_id}", service.delete_thread, methods=["DELETE"]),
            Route("/threads/{thread_id}/messages", service.thread_messages),
            Route("/threads/{thread_id}/messages", service.add_message, methods=["POST"]),
            Route("/workspaces", service.workspaces.list),
            Route("/workspaces", service.workspaces.create, methods=["POST"]),
            WebSocketRoute("/ws", service.websocket),
        ],
        lifespan=service.lifespan,
        middleware=[Middleware(BodyLimit, limit=settings.max_body_bytes)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
