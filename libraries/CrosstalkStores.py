"""Robot Framework library: the platform's PostgreSQL databases and Redis, by alias."""

from __future__ import annotations

import contextlib
import html
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from assertionengine import AssertionOperator
from crosstalk import assertions, context, htmllog, registry
from crosstalk import profile as target_profile
from crosstalk.context import Capability
from crosstalk.errors import CrosstalkError
from crosstalk.model import TestUser
from crosstalk.registry import Cleanup
from crosstalk.secrets import mask_url
from crosstalk.stores import (
    IsolationLevel,
    StoreError,
    Stores,
    begin,
    connect_postgres,
    connect_redis,
    finish,
    query,
    read_value,
    scan_keys,
    session_keys,
)
from crosstalk.version import VERSION
from psycopg2 import sql as pgsql
from robot.api import logger
from robot.api.deco import keyword, library

MAX_LOGGED_ROWS = 50
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _user_id(user: TestUser | str) -> str:
    user_id = user.user_id if isinstance(user, TestUser) else str(user)
    if not user_id:
        label = getattr(user, "label", user)
        raise StoreError(f"User '{label}' has no user_id yet: register or log in first.")
    return user_id


def _label(user: TestUser | str) -> str:
    return user.label if isinstance(user, TestUser) else str(user)


def _cell(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "…"


@library(scope="GLOBAL", version=VERSION, auto_keywords=False, listener=Cleanup())
class CrosstalkStores:
    """PostgreSQL (psycopg2) and Redis (redis-py) connections by alias.

    Connect once in a suite setup, then refer to the connection by its alias:

    | Connect To Postgres | backend | ${BACKEND_DATABASE_URL} |
    | Connect To Redis    | cache   | ${REDIS_URL}            |
    | ${rows} = | Query | backend | SELECT * FROM threads WHERE user_id = %s | ${alice.user_id} |

    Queries are always parameterized (``%s`` placeholders, values as extra
    arguments).  The SQL is logged in ``<code>``, the result as a table capped at
    50 rows.  Connections run in autocommit; ``Begin Transaction`` opens an
    explicit transaction at a chosen isolation level.  Passwords in URLs are
    masked in every message.
    """

    def __init__(self) -> None:
        self.stores = Stores()

    # ------------------------------------------------------------ connections
    def _keep(self, pool: dict[str, Any], kind: str, alias: str, url: str,
              connect: Callable[[str, str], Any]) -> None:
        """Open a connection under ``alias`` (closing the one it replaces) and register it for cleanup."""
        if alias in pool:
            pool.pop(alias).close()
        handle = pool[alias] = connect(alias, url)
        self.stores.urls[alias] = url
        registry.register(handle, owner="CrosstalkStores", kind=registry.STORE, label=f"{kind} '{alias}'",
                          user_id=None, is_open=lambda: pool.get(alias) is handle,
                          close=lambda: pool.pop(alias).close())
        logger.info(f"Connected {kind} alias '{alias}' to {mask_url(url)}")

    @keyword("Connect To Postgres")
    def connect_to_postgres(self, alias: str, url: str) -> None:
        """Opens a PostgreSQL connection under ``alias`` (autocommit).

        A bad URL or wrong credentials fail with one line naming the alias and the host.

        Example:
        | Connect To Postgres | backend | ${BACKEND_DATABASE_URL} |
        """
        self._keep(self.stores.postgres, "Postgres", alias, url, connect_postgres)

    @keyword("Connect To Redis")
    def connect_to_redis(self, alias: str, url: str) -> None:
        """Opens a Redis connection under ``alias`` and checks it with PING.

        Example:
        | Connect To Redis | cache | ${REDIS_URL} |
        """
        self._keep(self.stores.redis, "Redis", alias, url, connect_redis)

    @keyword("Disconnect From All Stores")
    def disconnect_from_all_stores(self) -> None:
        """Closes every Postgres and Redis connection (an open transaction is rolled back by the server).

        Example:
        | Disconnect From All Stores |
        """
        closed = list(self.stores.close_all())
        logger.info(f"Closed store connections: {', '.join(closed) or 'none'}")

    def postgres_url(self, alias: str) -> str | None:
        return self.stores.urls.get(alias) if alias in self.stores.postgres else None

    def redis_client(self, alias: str):
        return self.stores.rd(alias)

    # ------------------------------------------------------------ queries
    def _run(self, alias: str, statement: Any, params: tuple[Any, ...], log: bool = True) -> list[dict]:
        conn = self.stores.pg(alias)
        shown = statement.as_string(conn) if isinstance(statement, pgsql.Composable) else str(statement)
        try:
            rows = query(conn, statement, params)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"Query on '{alias}' failed: {first} (SQL: {shown})") from None
        if log:
            params_text = f" with {list(params)!r}" if params else ""
            logger.info(
                f"<code>{html.escape(shown)}</code>{html.escape(params_text)} on '{html.escape(alias)}': "
                f"{len(rows)} row(s)", html=True,
            )
            if rows:
                headers = list(rows[0])
                cells = ([_cell(row[h]) for h in headers] for row in rows)
                logger.info(htmllog.table(headers, cells, max_rows=MAX_LOGGED_ROWS), html=True)
        return rows

    @keyword("Query")
    def query(self, alias: str, sql: str, *params: Any) -> list[dict]:
        """Runs a parameterized statement and returns the rows as dictionaries.

        Use ``%s`` placeholders and pass the values as extra arguments; never paste values into the SQL.

        Example:
        | ${rows} = | Query | backend | SELECT title FROM threads WHERE user_id = %s | ${alice.user_id} |
        | Should Be Equal | ${rows}[0][title] | Hello |
        """
        return self._run(alias, sql, params)

    @keyword("Get Row Count")
    def get_row_count(
        self,
        alias: str,
        rows: str,
        assertion_operator: AssertionOperator | None = None,
        assertion_expected: Any = None,
        message: str | None = None,
        user: TestUser | str | None = None,
        thread: str | None = None,
        params: list | tuple = (),
        timeout: timedelta = timedelta(0),
    ) -> int:
        """Returns how many rows there are; with an operator, asserts it, retrying until ``timeout``.

        ``rows`` is a logical view of the target profile (``threads``, ``messages``,
        ``runs``: the profile's ownership SQL, in the platform's own tables), narrowed to
        ``user`` and/or ``thread``; or a parameterized SQL query (``%s`` placeholders,
        values in ``params``) whose rows are counted.  The operators are those of Browser's
        AssertionEngine (``==  !=  <  >  <=  >=  validate``).  A failure names the alias,
        the view or query, the user and thread, the last count seen and how long it was
        polled.

        Example:
        | Get Row Count | backend | messages | == | 0 | user=${mallory} | thread=${run.thread_id} |
        | Get Row Count | backend | threads | == | 1 | user=${alice} | timeout=2s |
        | Get Row Count | backend | SELECT 1 FROM messages WHERE thread_id = %s | == | 2 | params=${{[$t]}} |
        | ${count} = | Get Row Count | backend | runs | user=${alice} |
        """
        profile = target_profile.current()
        if rows in profile.ownership:
            observe, what = self._view_count(alias, rows, user, thread)
        elif rows.lstrip().split(None, 1)[0].upper() in ("SELECT", "WITH", "TABLE", "VALUES"):
            if user is not None or thread is not None:
                raise StoreError("Get Row Count: user= and thread= narrow a view "
                                 f"({', '.join(profile.ownership)}); in SQL, pass them as params instead.")
            observe = lambda: len(self._run(alias, rows, tuple(params)))  # noqa: E731
            what = f"rows of <{rows}> on '{alias}'"
        else:
            raise StoreError(f"Get Row Count: '{rows}' is neither a view of the profile {profile.name} "
                             f"({', '.join(profile.ownership)}) nor a SELECT query.")
        return assertions.assert_that(observe, assertion_operator, assertion_expected, what=what,
                                      timeout=timeout, message=message)

    def _view_count(self, alias: str, view: str, user: TestUser | str | None,
                    thread: str | None) -> tuple[Any, str]:
        """How to count the rows of a view narrowed to a user and/or a thread, and how to name them."""
        user_id = None if user is None else _user_id(user)

        def observe() -> int:
            found = self.get_view_rows(alias, view, users=[user] if user is not None else (),
                                       threads=[thread] if thread is not None else ())
            return len([r for r in found
                        if (user_id is None or str(r.get("user_id")) == user_id)
                        and (thread is None or str(r.get("thread_id")) == str(thread))])

        if user is None and thread is None:
            raise StoreError(f"Get Row Count: narrow the {view} view with user= or thread= "
                             "(or count a SELECT query).")
        whose = "" if user is None else f" of {_label(user)}"
        where = "" if thread is None else f" in thread {thread}"
        return observe, f"{view} rows{whose}{where} on '{alias}'"

    @keyword("Rows Should Contain")
    def rows_should_contain(self, alias: str, sql: str, expected: dict[str, Any], *params: Any) -> dict:
        """Fails unless some row of the query has all the column values in ``expected``; returns that row.

        ``expected`` is a dictionary (``&{row}`` or an inline ``${{ {...} }}``), given
        before the query parameters.  Values
        are compared as text, so ``message_count=2`` matches the integer 2.

        Example:
        | VAR | &{reply} | role=agent |
        | Rows Should Contain | backend | SELECT * FROM messages WHERE thread_id = %s | ${reply} | ${t} |
        """
        if not expected:
            raise StoreError("Rows Should Contain needs at least one column value, e.g. &{row} role=agent.")
        rows = self._run(alias, sql, params)
        for row in rows:
            missing = [c for c in expected if c not in row]
            if missing:
                raise StoreError(f"Columns {missing} are not in the result; it has {list(row)}.")
            if all(str(row[c]) == str(v) for c, v in expected.items()):
                return row
        wanted = ", ".join(f"{c}={v}" for c, v in expected.items())
        raise AssertionError(f"No row on '{alias}' has {wanted} among {len(rows)} row(s): {sql}")

    def _user_rows(self, alias: str, table: str, user: TestUser | str, column: str) -> list[dict]:
        for name in (table, column):
            if not _IDENTIFIER.match(name):
                raise StoreError(f"'{name}' is not a plain table or column name (letters, digits, _).")
        statement = pgsql.SQL("SELECT * FROM {} WHERE {} = %s ORDER BY created_at").format(
            pgsql.Identifier(table), pgsql.Identifier(column)
        )
        return self._run(alias, statement, (_user_id(user),))

    @keyword("Get Rows Of User")
    def get_rows_of_user(
        self, alias: str, table: str, user: TestUser | str, column: str = "user_id"
    ) -> list[dict]:
        """Returns every row of ``table`` whose ``column`` (default ``user_id``) is the user's id.

        Example:
        | ${threads} = | Get Rows Of User | backend | threads | ${alice} |
        """
        return self._user_rows(alias, table, user, column)

    # ------------------------------------------------------------ logical views (target profile)
    @keyword("Get View Rows")
    def get_view_rows(
        self, alias: str, view: str, users: list | tuple = (), threads: list | tuple = ()
    ) -> list[dict]:
        """Rows of a logical view (``threads``, ``messages``, ``runs``) of these users or threads.

        The SQL is the target profile's ownership query for the view
        (``stores.ownership``), written in the platform's own tables and types; every
        row carries the canonical columns ``user_id`` and ``thread_id``.

        Example:
        | ${rows} = | Get View Rows | backend | messages | users=${{[$alice]}} |
        """
        profile = target_profile.current()
        if view not in profile.ownership:
            raise StoreError(f"Unknown view '{view}': the profile {profile.name} declares "
                             f"{', '.join(profile.ownership)}.")
        params = {"user_ids": [_user_id(u) for u in users], "thread_ids": [str(t) for t in threads]}
        return self._run(alias, profile.ownership[view], params)

    @keyword("Session Keys Of User")
    def session_keys_of_user(self, alias: str, user: TestUser | str) -> list[str]:
        """The user's session records in Redis (the target profile's ``redis.session`` pattern).

        Example:
        | ${keys} = | Session Keys Of User | cache | ${alice} |
        """
        return self.list_keys(alias, target_profile.current().session_pattern(_user_id(user)))

    @keyword("Get Session Count")
    def get_session_count(
        self,
        user: TestUser | str | list,
        assertion_operator: AssertionOperator | None = None,
        assertion_expected: Any = None,
        message: str | None = None,
        timeout: timedelta = timedelta(0),
        alias: str | None = None,
    ) -> int | list[int]:
        """Returns the user's session record count in Redis; with an operator, asserts it until ``timeout``.

        Session records match the target profile's ``redis.session`` pattern (the
        reference platform's is ``session:<user_id>:*``); the server writes one per open
        socket and must remove it when the socket closes, so a check after connects or
        disconnects polls until ``timeout``.  Redis is the ``alias`` connection if given,
        else the target's ``REDIS_URL`` (the test skips, naming the variable, when the
        target gives none).

        Given a list of users, the assertion holds for each user (within one ``timeout``)
        and the counts are returned as a list; a failure names every user who broke it
        with their last count.  ``message`` says why it matters and is added to the
        failure (``{value}`` and ``{expected}`` are filled in).

        Example:
        | Get Session Count | ${alice} | == | 0 | timeout=5s |
        | Get Session Count | ${users} | == | 1 | timeout=5s |
        | ${count} = | Get Session Count | ${alice} |
        """
        users = list(user) if isinstance(user, (list, tuple)) else [user]
        if not users:
            raise StoreError("Get Session Count got an empty list of users.")
        values, failures = [], []
        with self._redis(alias) as client:
            started = time.monotonic()  # one timeout for all users, from when Redis answers
            for each in users:
                user_id = _user_id(each)
                pattern = target_profile.current().session_pattern(user_id)
                left = max(timeout.total_seconds() - (time.monotonic() - started), 0.0)
                outcome = assertions.check(
                    lambda user_id=user_id: len(session_keys(client, user_id)), assertion_operator,
                    assertion_expected, what=f"session records of {_label(each)} in Redis ({pattern})",
                    timeout=left, message=message)
                values.append(outcome.result if outcome.passed else outcome.value)
                if not outcome.passed:
                    failures.append(outcome.failure)
        if failures:
            many = f"{len(failures)} of {len(users)} users: " if len(users) > 1 else ""
            raise CrosstalkError(many + "; ".join(failures[:10]))
        counts = ", ".join(f"{_label(u)}: {n}" for u, n in zip(users, values, strict=True))
        logger.info(f"session records: {counts}")
        return values if isinstance(user, (list, tuple)) else values[0]

    @contextlib.contextmanager
    def _redis(self, alias: str | None) -> Iterator[Any]:
        """The ``alias`` connection, or a short-lived one to the target's ``REDIS_URL``."""
        if alias is not None:
            yield self.stores.rd(alias)
            return
        ctx = context.current()
        if not ctx.has(Capability.REDIS):
            ctx.skip(Capability.REDIS, f"needs redis: session records cannot be read: "
                                       f"{ctx.reason(Capability.REDIS)}")
        client = connect_redis("target", str(ctx.get("REDIS_URL")))
        try:
            yield client
        finally:
            client.close()

    # ------------------------------------------------------------ transactions
    @keyword("Begin Transaction")
    def begin_transaction(
        self, alias: str, isolation: IsolationLevel = IsolationLevel.READ_COMMITTED
    ) -> None:
        """Opens an explicit transaction on ``alias`` at the given isolation level.

        Levels: ``READ COMMITTED``, ``REPEATABLE READ``, ``SERIALIZABLE``.

        Example:
        | Begin Transaction | backend | isolation=REPEATABLE READ |
        | Query | backend | UPDATE threads SET title = %s WHERE thread_id = %s | New | ${thread} |
        | Commit | backend |
        """
        conn = self.stores.pg(alias)
        if not conn.autocommit:
            raise StoreError(f"A transaction is already open on '{alias}': Commit or Rollback it first.")
        begin(conn, isolation)
        logger.info(f"BEGIN ISOLATION LEVEL {isolation.value} on '{alias}'")

    @keyword("Commit")
    def commit(self, alias: str) -> None:
        """Commits the open transaction on ``alias``.

        Example:
        | Commit | backend |
        """
        finish(self.stores.pg(alias), commit=True)
        logger.info(f"COMMIT on '{alias}'")

    @keyword("Rollback")
    def rollback(self, alias: str) -> None:
        """Rolls back the open transaction on ``alias``.

        Example:
        | Rollback | backend |
        """
        finish(self.stores.pg(alias), commit=False)
        logger.info(f"ROLLBACK on '{alias}'")

    # ------------------------------------------------------------ Redis
    @keyword("List Keys")
    def list_keys(self, alias: str, pattern: str = "*") -> list[str]:
        """Returns the keys matching a glob ``pattern``, sorted (SCAN, never KEYS).

        Example:
        | ${keys} = | List Keys | cache | session:${alice.user_id}:* |
        """
        keys = scan_keys(self.stores.rd(alias), pattern)
        shown = ", ".join(keys[:MAX_LOGGED_ROWS]) + (" …" if len(keys) > MAX_LOGGED_ROWS else "")
        logger.info(f"SCAN MATCH {pattern} on '{alias}': {len(keys)} key(s): {shown}")
        return keys

    @keyword("Get Redis Value")
    def get_redis_value(self, alias: str, key: str) -> Any:
        """Returns the value of ``key`` read by its type.

        string -> text, hash -> dict, list -> list, set -> sorted list, zset -> list of [member, score].

        Fails when the key does not exist.

        Example:
        | ${session} = | Get Redis Value | cache | ${session_key} |
        | Should Be Equal | ${session}[user_id] | ${alice.user_id} |
        """
        kind, value = read_value(self.stores.rd(alias), key)
        if kind == "none":
            raise AssertionError(f"Redis key '{key}' does not exist on '{alias}'.")
        logger.info(f"Redis {kind} '{key}' on '{alias}': {_cell(value)}")
        return value

    @keyword("Redis Key Should Exist")
    def redis_key_should_exist(self, alias: str, key: str) -> None:
        """Fails unless ``key`` exists.

        Example:
        | Redis Key Should Exist | cache | ctx:${alice.user_id}:${thread} |
        """
        if not self.stores.rd(alias).exists(key):
            raise AssertionError(f"Redis key '{key}' does not exist on '{alias}'.")

    @keyword("Redis Key Should Not Exist")
    def redis_key_should_not_exist(self, alias: str, key: str) -> None:
        """Fails if ``key`` exists, showing its type.

        Example:
        | Redis Key Should Not Exist | cache | session:${alice.user_id}:${connection_id} |
        """
        client = self.stores.rd(alias)
        if client.exists(key):
            kind = client.type(key)
            raise AssertionError(f"Redis key '{key}' exists on '{alias}' (type {kind}) but should not.")
