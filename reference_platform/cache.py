"""The thread-list cache: ``GET /threads`` served from Redis, invalidated on every write.

Two races live here, each with its fault switch:

* Stale reads.  A reader that loads the list from PostgreSQL while a writer
  commits and invalidates would put the old list back into the cache.  Every
  user has a generation counter; a writer bumps it after its commit, and a
  reader stores what it loaded only if the generation it saw before loading is
  still current (a check-then-set done atomically in one Lua script).
  ``cache_key_collision`` keys the list without the user, so users see each
  other's lists.

* The ChatGPT incident of March 2023 (redis-py issue 2624).  Cache reads go
  through this module's own small connection pool over raw asyncio streams,
  behind a TCP proxy that delays Redis replies (the link latency of a busy
  production network), and a read is cancelled when the HTTP client goes away.
  A connection whose command was sent but whose reply was not read is one
  reply behind: the correct pool closes it; with ``redis_cancel_leak`` it goes
  back to the pool undrained and the next user's GET reads the previous
  user's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import urllib.parse

from . import faults, variant

log = logging.getLogger("reference_platform.cache")

CACHE_TTL_SECONDS = 300
# Replies on the cache link arrive this much later than they were sent.
LINK_DELAY_MS = float(os.environ.get("REFPLAT_CACHE_LINK_DELAY_MS", "30"))
POOL_SIZE = 4
SET_IF_GENERATION = """
local gen = redis.call('GET', KEYS[2]) or '0'
if gen == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]); return 1 end
return 0
"""


class RedisProtocolError(Exception):
    pass


def _encode(*parts: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def _read_reply(reader: asyncio.StreamReader):
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisProtocolError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = await reader.readexactly(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [await _read_reply(reader) for _ in range(count)]
    raise RedisProtocolError(f"unexpected reply line {line[:40]!r}")


class _RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class RawRedisPool:
    """A minimal pool of RESP connections; one command per checkout."""

    def __init__(self, host: str, port: int, db: int, size: int = POOL_SIZE):
        self.host, self.port, self.db = host, port, db
        self._idle: list[_RawConnection] = []
        self._slots = asyncio.Semaphore(size)
        self.discarded = 0

    async def _connect(self) -> _RawConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        conn = _RawConnection(reader, writer)
        if self.db:
            writer.write(_encode("SELECT", self.db))
            await writer.drain()
            await _read_reply(reader)
        return conn

    async def execute(self, *parts: str | bytes | int):
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            reusable = False
            try:
                conn.writer.write(_encode(*parts))
                await conn.writer.drain()
                reply = await _read_reply(conn.reader)
                reusable = True
                return reply
            except asyncio.CancelledError:
                # The bug of redis-py 2624: the command is on the wire, its reply is not read yet.
                reusable = faults.on("redis_cancel_leak")
                raise
            finally:
                if reusable:
                    self._idle.append(conn)
                else:
                    self.discarded += 1
                    conn.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class LatencyProxy:
    """TCP proxy on loopback that delays every upstream->client chunk by ``delay_ms``."""

    def __init__(self, upstream_host: str, upstream_port: int, delay_ms: float):
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay_ms / 1000
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> LatencyProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, client_reader, client_writer) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (OSError, asyncio.TimeoutError):
            client_writer.close()
            return
        pipes = (self._pipe(client_reader, up_writer, 0.0), self._pipe(up_reader, client_writer, self.delay))
        for coro in pipes:
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(reader, writer, delay: float) -> None:
        # Each chunk is released delay seconds after it arrived, in arrival order.
        queue: asyncio.Queue = asyncio.Queue()

        async def release() -> None:
            while True:
                arrived, chunk = await queue.get()
                if chunk is None:
                    break
                wait = arrived + delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        releaser = asyncio.create_task(release())
        try:
            while True:
                chunk = await reader.read(65536)
                queue.put_nowait((time.monotonic(), chunk or None))
                if not chunk:
                    break
            await releaser
        except Exception:
            pass  # a reset on either side ends this direction; the other side sees EOF next
        finally:
            releaser.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        if self.server:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()


class ClientGone(Exception):
    """The HTTP client disconnected while its request was being served."""


class ThreadListCache:
    def __init__(self, redis_url: str):
        parts = urllib.parse.urlsplit(redis_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int((parts.path or "/0").lstrip("/") or 0)
        self.proxy: LatencyProxy | None = None
        self.pool: RawRedisPool | None = None

    async def start(self) -> None:
        self.proxy = await LatencyProxy(self.host, self.port, LINK_DELAY_MS).start()
        self.pool = RawRedisPool("127.0.0.1", self.proxy.port, self.db)

    async def close(self) -> None:
        if self.pool:
            self.pool.close()
        if self.proxy:
            await self.proxy.close()

    @staticmethod
    def key(user_id: str) -> str:
        if faults.on("cache_key_collision"):
            return "cache:threads"
        return variant.key("threads", user_id)

    @staticmethod
    def generation_key(user_id: str) -> str:
        return variant.key("threads_gen", user_id)

    async def get(self, user_id: str) -> tuple[list | None, str]:
        """The cached list (None on a miss) and the generation to store a fresh one under."""
        reply = await self.pool.execute("MGET", self.key(user_id), self.generation_key(user_id))
        value, generation = reply if isinstance(reply, list) and len(reply) == 2 else (None, None)
        generation = generation.decode() if isinstance(generation, bytes) else "0"
        if not isinstance(value, bytes):
            return None, generation
        try:
            cached = json.loads(value)
        except ValueError:
            return None, generation
        return (cached if isinstance(cached, list) else None), generation

    async def store(self, user_id: str, generation: str, threads: list) -> None:
        await self.pool.execute(
            "EVAL",
            SET_IF_GENERATION,
            2,
            self.key(user_id),
            self.generation_key(user_id),
            generation,
            json.dumps(threads),
            CACHE_TTL_SECONDS,
        )

    async def invalidate(self, user_id: str) -> None:
        # Bump first, then delete: a reader that loaded before the bump can no longer store.
        await self.pool.execute("INCR", self.generation_key(user_id))
        await self.pool.execute("DEL", self.key(user_id))


async def unless_client_leaves(receive, coro):
    """Run ``coro`` but cancel it when the ASGI client disconnects first (raises ClientGone)."""
    work = asyncio.ensure_future(coro)

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work in done:
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    raise ClientGone()
