"""PostgreSQL and Redis access by alias, below the keyword layer of `CrosstalkStores`.

Connection errors become one line that names the alias and the host, never the
password.  Redis keys are listed with SCAN (never KEYS: it blocks a production
server), and values are read according to their type.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import redis

from . import profile as target_profile
from .errors import CrosstalkError
from .secrets import mask_url

CONNECT_TIMEOUT_S = 10
SCAN_COUNT = 500


class IsolationLevel(enum.Enum):
    """Transaction isolation levels of PostgreSQL."""

    READ_COMMITTED = "READ COMMITTED"
    REPEATABLE_READ = "REPEATABLE READ"
    SERIALIZABLE = "SERIALIZABLE"

    def __str__(self) -> str:
        return self.value


class StoreError(CrosstalkError):
    """A one-line, actionable reason why a store cannot be used."""


def host_of(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    except ValueError:
        return "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_url(text[0]) if text else type(exc).__name__


def connect_postgres(alias: str, url: str) -> psycopg2.extensions.connection:
    if not url or not str(url).startswith(("postgresql://", "postgres://")):
        raise StoreError(
            f"Postgres alias '{alias}': URL '{mask_url(str(url))}' is not a postgresql:// URL; "
            "pass e.g. ${BACKEND_DATABASE_URL}."
        )
    try:
        conn = psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg2.Error as exc:
        raise StoreError(
            f"Cannot connect Postgres alias '{alias}' to {host_of(url)}: {_first_line(exc)}"
        ) from None
    conn.autocommit = True  # explicit transactions only, via begin()
    return conn


def connect_redis(alias: str, url: str) -> redis.Redis:
    if not url or not str(url).startswith(("redis://", "rediss://", "unix://")):
        raise StoreError(
            f"Redis alias '{alias}': URL '{mask_url(str(url))}' is not a redis:// URL; "
            "pass e.g. ${REDIS_URL}."
        )
    try:
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=CONNECT_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise StoreError(
            f"Cannot connect Redis alias '{alias}' to {host_of(url)}: {_first_line(exc)}"
        ) from None
    return client


def query(
    conn: psycopg2.extensions.connection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
) -> list[dict[str, Any]]:
    """Run a parameterized statement (``%s`` with a sequence, ``%(name)s`` with a mapping); rows as dicts."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        if isinstance(params, Mapping):
            cursor.execute(sql, dict(params))
        else:
            cursor.execute(sql, tuple(params) if params else None)
        if cursor.description is None:
            return []
        return [dict(row) for row in cursor.fetchall()]


def fetch(alias: str, url: str, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple]:
    """One statement on a connection of its own (opened and closed here); rows as tuples.

    ``sql`` is written in the reference platform's table and column names; the target
    profile translates it to the target's own (``profile.sql``).

    Example:
        count = fetch("backend", url, "SELECT count(*) FROM threads WHERE user_id = %s", (uid,))[0][0]
    """
    from . import profile as target_profile  # the profile reads the target context: import late

    conn = connect_postgres(alias, url)
    try:
        with conn.cursor() as cursor:
            # parameters always given, so '%%' means '%' with or without them
            cursor.execute(target_profile.current().sql(sql),
                           dict(params) if isinstance(params, Mapping) else tuple(params))
            return cursor.fetchall() if cursor.description is not None else []
    finally:
        conn.close()


def begin(conn: psycopg2.extensions.connection, level: IsolationLevel) -> None:
    conn.autocommit = False
    with conn.cursor() as cursor:
        # psycopg2 opens the transaction on the first statement; SET TRANSACTION must come first
        cursor.execute(f"SET TRANSACTION ISOLATION LEVEL {level.value}")


def finish(conn: psycopg2.extensions.connection, commit: bool) -> None:
    try:
        conn.commit() if commit else conn.rollback()
    finally:
        conn.autocommit = True


def scan_keys(client: redis.Redis, pattern: str = "*") -> list[str]:
    return sorted(set(client.scan_iter(match=pattern, count=SCAN_COUNT)))


def session_keys(client: redis.Redis, user_id: str) -> list[str]:
    """The user's session records: keys matching the target profile's ``redis.session`` pattern."""
    return scan_keys(client, target_profile.current().session_pattern(user_id))


def read_value(client: redis.Redis, key: str) -> tuple[str, Any]:
    """(type, value) of a key: str, dict, list, set (sorted list) or zset (list of [member, score])."""
    kind = client.type(key)
    if kind == "string":
        return kind, client.get(key)
    if kind == "hash":
        return kind, client.hgetall(key)
    if kind == "list":
        return kind, client.lrange(key, 0, -1)
    if kind == "set":
        return kind, sorted(client.smembers(key))
    if kind == "zset":
        return kind, [[member, score] for member, score in client.zrange(key, 0, -1, withscores=True)]
    if kind == "none":
        return kind, None
    return kind, f"<{kind} value not read>"


def _by_alias(pool: Mapping[str, Any], alias: str, kind: str) -> Any:
    try:
        return pool[alias]
    except KeyError:
        known = ", ".join(pool) or "none"
        raise StoreError(
            f"No {kind} connection with alias '{alias}' (open: {known}): use Connect To {kind} first."
        ) from None


@dataclass
class Stores:
    """Open connections by alias."""

    postgres: dict[str, psycopg2.extensions.connection] = field(default_factory=dict)
    redis: dict[str, redis.Redis] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def pg(self, alias: str) -> psycopg2.extensions.connection:
        return _by_alias(self.postgres, alias, "Postgres")

    def rd(self, alias: str) -> redis.Redis:
        return _by_alias(self.redis, alias, "Redis")

    def close_all(self) -> Iterator[str]:
        for alias, conn in list(self.postgres.items()):
            try:
                conn.close()
            finally:
                del self.postgres[alias]
                yield alias
        for alias, client in list(self.redis.items()):
            try:
                client.close()
            finally:
                del self.redis[alias]
                yield alias
