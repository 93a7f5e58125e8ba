"""Engine for database transaction races: named connections, exact interleavings, pools.

`CrosstalkTransactions` is the thin Robot layer on top of this module; everything
here is plain Python so pytest can drive it against a real PostgreSQL.

* `ScratchDatabase` creates a uniquely named database next to the platform's
  databases (so parallel pabot processes never share one) and drops it again.
* `TransactionEngine` holds named psycopg2 connections ("T1", "T2", ...), each
  running its own transaction at a chosen isolation level, and executes steps in
  exactly the order given.  Steps run on the calling thread, except a step marked
  ``blocks``: it runs in a background thread, and the engine proves from
  ``pg_stat_activity`` that it is waiting for a lock (and whose) before the next
  step runs.  Every step is journaled with its SQLSTATE and timing.
* `QueuedPool` wraps `psycopg2.pool.ThreadedConnectionPool`, which raises
  `PoolError` the moment it is exhausted, with a bounded wait queue.
"""

from __future__ import annotations

import html
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions
import psycopg2.pool
from psycopg2 import sql as pgsql

from .errors import CrosstalkError
from .secrets import mask_dsn
from .stats import percentile
from .stores import IsolationLevel

MAX_ROWS = 50  # rows kept per step: enough for a log table, bounded for big SELECTs
POLL_INTERVAL = 0.01
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
_STATUS = psycopg2.extensions


class TransactionError(CrosstalkError):
    """A race scenario did not behave as required; the message says what and who."""


# ---------------------------------------------------------------- helpers


def sqlstate_name(code: str | None) -> str:
    """`40001` -> `serialization_failure`; unknown codes come back unchanged."""
    if not code:
        return ""
    try:
        return psycopg2.errorcodes.lookup(code).lower()
    except KeyError:
        return code


def classify_sqlstate(code: str | None) -> str:
    """Coarse meaning of a SQLSTATE for reports: what a caller should do about it."""
    if not code:
        return "ok"
    if code in RETRYABLE_SQLSTATES or code.startswith("40"):
        return "retryable: the transaction lost a race and must be retried"
    if code == "55P03":
        return "lock timeout: waited too long for another transaction's lock"
    if code == "57014":
        return "cancelled"
    if code.startswith("08") or code.startswith("57P"):
        return "connection lost"
    if code.startswith("23"):
        return "constraint violation"
    if code == "25P02":
        return "transaction already failed"
    return "error"


def describe_sqlstate(code: str | None) -> str:
    return f"{code} {sqlstate_name(code)}" if code else "no SQLSTATE"


def with_database(dsn: str, dbname: str) -> str:
    """The same server and credentials as `dsn`, database `dbname` (key=value DSN)."""
    return psycopg2.extensions.make_dsn(dsn, dbname=dbname)


def _first_line(error: BaseException) -> str:
    text = (getattr(error, "pgerror", None) or str(error) or type(error).__name__).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _connect(dsn: str, *, connect_timeout: float, what: str, **kwargs: Any):
    try:
        return psycopg2.connect(dsn, connect_timeout=max(1, round(connect_timeout)), **kwargs)
    except psycopg2.OperationalError as error:
        raise TransactionError(
            f"Cannot connect to PostgreSQL for {what} at {mask_dsn(dsn)}: {_first_line(error)}. "
            "Check that the server runs and the URL (BACKEND_DATABASE_URL) is right."
        ) from None


# ---------------------------------------------------------------- scratch database

SCRATCH_NAME = re.compile(r"^(?P<prefix>[a-z_][a-z0-9_]*)_(?P<stamp>\d{10})_\d+_[0-9a-f]{8}$")


@dataclass
class ScratchDatabase:
    """A throw-away database on the same server as `server_dsn`.

    When the user may not create databases (SQLSTATE 42501, e.g. a managed server),
    it falls back to a throw-away schema in the target database instead
    (`schema_only`); connections then reach it through their ``search_path``.
    """

    server_dsn: str
    name: str
    schema_only: bool = False

    @property
    def dsn(self) -> str:
        if self.schema_only:
            return psycopg2.extensions.make_dsn(self.server_dsn, options=f"-c search_path={self.name}")
        return with_database(self.server_dsn, self.name)

    @property
    def kind(self) -> str:
        return "schema" if self.schema_only else "database"

    @classmethod
    def create(cls, server_dsn: str, prefix: str = "crosstalk_scratch", connect_timeout: float = 5.0,
               fallback_to_schema: bool = True) -> ScratchDatabase:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,30}", prefix):
            raise ValueError(f"Scratch database prefix '{prefix}' must be lower-case letters, digits "
                             "and '_' (at most 31 characters), e.g. 'crosstalk_scratch'.")
        # time, pid and randomness: unique across pabot processes and hosts sharing a server
        name = f"{prefix}_{int(time.time())}_{os.getpid()}_{secrets.token_hex(4)}"
        conn = _connect(server_dsn, connect_timeout=connect_timeout, what="creating a scratch database")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                try:
                    cur.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
                    return cls(server_dsn, name)
                except psycopg2.Error as error:
                    if error.pgcode != "42501" or not fallback_to_schema:
                        raise
                    refused = _first_line(error)
                try:
                    cur.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(name)))
                    return cls(server_dsn, name, schema_only=True)
                except psycopg2.Error as error:
                    raise TransactionError(
                        f"Cannot create a scratch database or schema on {mask_dsn(server_dsn)}: "
                        f"{refused}; {_first_line(error)}. Grant CREATEDB (or CREATE on the database) "
                        "to this user, or point BACKEND_DATABASE_URL at a user that has it.") from None
        except psycopg2.Error as error:
            raise TransactionError(
                f"Cannot create scratch database {name} on {mask_dsn(server_dsn)}: "
                f"{describe_sqlstate(error.pgcode)}: {_first_line(error)}."
            ) from None
        finally:
            conn.close()

    def drop(self, connect_timeout: float = 5.0) -> None:
        if not self.schema_only:
            drop_database(self.server_dsn, self.name, connect_timeout)
            return
        conn = _connect(self.server_dsn, connect_timeout=connect_timeout, what=f"dropping schema {self.name}")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                # our sessions are closed by now; never wait forever on someone else's lock
                cur.execute("SET lock_timeout = '10s'")
                cur.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(self.name)))
        finally:
            conn.close()


def drop_database(server_dsn: str, name: str, connect_timeout: float = 5.0) -> None:
    """Terminate leftover sessions on `name` and drop it (idempotent)."""
    conn = _connect(server_dsn, connect_timeout=connect_timeout, what=f"dropping {name}")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            force = conn.server_version >= 130000
            statement = pgsql.SQL("DROP DATABASE IF EXISTS {}" + (" WITH (FORCE)" if force else ""))
            for attempt in range(5):
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                try:
                    cur.execute(statement.format(pgsql.Identifier(name)))
                    return
                except psycopg2.errors.ObjectInUse:
                    # a terminated backend can take a moment to exit
                    if attempt == 4:
                        raise
                    time.sleep(0.2)
    finally:
        conn.close()


def drop_stale_scratch_databases(server_dsn: str, prefix: str = "crosstalk_scratch",
                                 older_than: float = 6 * 3600, connect_timeout: float = 5.0) -> list[str]:
    """Drop scratch databases left by killed runs (older than `older_than` seconds)."""
    conn = _connect(server_dsn, connect_timeout=connect_timeout, what="listing scratch databases")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + r"\_%",))
            names = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    stale = []
    for name in names:
        match = SCRATCH_NAME.match(name)
        if match and match["prefix"] == prefix and time.time() - int(match["stamp"]) > older_than:
            try:
                drop_database(server_dsn, name, connect_timeout)
            except psycopg2.Error:
                continue  # e.g. owned by another user: not ours to clean up
            stale.append(name)
    return stale


# ---------------------------------------------------------------- steps and results

_STEP = re.compile(r"^\s*(?P<name>[A-Za-z_][\w-]*)(?P<blocks>\s+blocks)?\s*:\s*(?P<sql>\S.*)$", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


@dataclass(frozen=True)
class Step:
    transaction: str
    sql: str
    blocks: bool = False

    @classmethod
    def parse(cls, text: str) -> Step:
        match = _STEP.match(str(text))
        if not match:
            raise ValueError(
                f"Step '{text}' is not 'NAME: SQL' or 'NAME blocks: SQL', "
                "e.g. 'T1: SELECT v FROM acct WHERE id = 1' or 'T2 blocks: UPDATE acct SET v = 0'."
            )
        return cls(match["name"], match["sql"].strip(), bool(match["blocks"]))


def _keyword(sql: str) -> str:
    return sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""


def _is_begin(sql: str) -> bool:
    return _keyword(sql) in {"BEGIN", "START"}


def _is_end(sql: str) -> bool:
    return _keyword(sql) in {"COMMIT", "ROLLBACK", "END", "ABORT"}


@dataclass(repr=False)
class StepResult:
    """What one step did.  `status`: ok, error, skipped, rolled back, running."""

    row: int
    step: int
    transaction: str
    sql: str
    segment: int  # which transaction of this connection (1 = its first BEGIN..COMMIT)
    attempt: int = 1
    blocks: bool = False
    implicit: bool = False
    status: str = "running"
    command: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    sqlstate: str | None = None
    error: str | None = None
    started_ms: float = 0.0
    ended_ms: float | None = None
    blocked_by: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def value(self) -> Any:
        """First column of the first row, or None."""
        return self.rows[0][0] if self.rows and self.rows[0] else None

    @property
    def duration_ms(self) -> float | None:
        return None if self.ended_ms is None else self.ended_ms - self.started_ms

    @property
    def failed(self) -> bool:
        return self.status == "error"

    def outcome(self) -> str:
        if self.status == "error":
            return f"{describe_sqlstate(self.sqlstate)}: {self.error}"
        if self.status in ("skipped", "rolled back"):
            return f"{self.status} ({self.note})" if self.note else self.status
        if self.status == "running":
            return "still running"
        if self.columns:
            shown = ", ".join(
                "(" + ", ".join(f"{c}={v!r}" for c, v in zip(self.columns, r, strict=False)) + ")"
                for r in self.rows[:3])
            more = f" and {len(self.rows) - 3} more" if len(self.rows) > 3 else ""
            return f"{self.command}: {shown}{more}" if self.rows else f"{self.command}: no rows"
        return self.command or "ok"

    def label(self) -> str:
        return f"step {self.step} ({self.transaction}: {self.sql})"

    def __repr__(self) -> str:
        return f"StepResult({self.label()} -> {self.outcome()})"


@dataclass
class Session:
    """One named connection; at most one transaction and one background step at a time."""

    name: str
    conn: Any
    pid: int
    isolation: IsolationLevel
    deadlock_timeout_ms: int | None
    segment: int = 0
    failed_step: StepResult | None = None
    pending: tuple[threading.Thread, StepResult] | None = None

    @property
    def transaction_status(self) -> int:
        return self.conn.info.transaction_status

    def close(self) -> None:
        with suppress(psycopg2.Error):
            self.conn.close()


@dataclass
class Retry:
    transaction: str
    segment: int
    sqlstate: str | None
    attempts: int
    succeeded: bool


@dataclass(repr=False)
class InterleavingResult:
    """Everything one interleaving did; Robot keywords assert on it and log it."""

    isolation: dict[str, str]
    steps: list[StepResult]
    anomaly: str = "anomaly"
    invariant: str | None = None
    invariant_held: bool | None = None
    state_columns: list[str] = field(default_factory=list)
    state_rows: list[tuple] = field(default_factory=list)
    retries: list[Retry] = field(default_factory=list)
    elapsed_ms: float = 0.0

    def _segments(self, attempt: int | None = None) -> dict[tuple[str, int, int], list[StepResult]]:
        grouped: dict[tuple[str, int, int], list[StepResult]] = {}
        for result in self.steps:
            if attempt is None or result.attempt == attempt:
                grouped.setdefault((result.transaction, result.segment, result.attempt), []).append(result)
        return grouped

    @property
    def losers(self) -> dict[str, str]:
        """Transactions refused by PostgreSQL on their first attempt: name -> SQLSTATE."""
        lost: dict[str, str] = {}
        for (name, _segment, _attempt), results in self._segments(attempt=1).items():
            for result in results:
                if result.failed and result.sqlstate and result.sqlstate.startswith("40"):
                    lost.setdefault(name, result.sqlstate)
                    break
        return lost

    @property
    def errors(self) -> list[StepResult]:
        return [r for r in self.steps if r.failed]

    def committed(self, name: str) -> bool:
        """True when the last transaction `name` ran ended with a successful COMMIT."""
        ends = [r for r in self.steps if r.transaction == name and _is_end(r.sql) and not r.implicit]
        if not ends:
            return False
        last = ends[-1]
        return last.status == "ok" and last.command == "COMMIT"

    @property
    def transactions(self) -> list[str]:
        return list(dict.fromkeys(r.transaction for r in self.steps))

    def reads(self, name: str) -> list[Any]:
        """First value of every successful SELECT of transaction `name`, in order."""
        return [r.value for r in self.steps
                if r.transaction == name and r.status == "ok" and r.columns and r.rows]

    @property
    def anomaly_occurred(self) -> bool:
        if self.invariant_held is None:
            raise TransactionError(
                f"Cannot judge {self.anomaly}: the interleaving had no invariant. "
                "Pass invariant=SELECT <boolean> to Run Interleaving.")
        return not self.invariant_held and not self.losers

    def state_text(self) -> str:
        if not self.state_columns:
            return ""
        return "; ".join(", ".join(f"{c}={v!r}" for c, v in zip(self.state_columns, row, strict=False))
                         for row in self.state_rows[:10]) or "no rows"

    def summary(self) -> str:
        levels = sorted(set(self.isolation.values()))
        parts = [f"under {' / '.join(levels)}:"]
        for name in self.transactions:
            if name in self.losers:
                parts.append(f"{name} refused with {describe_sqlstate(self.losers[name])}")
            elif self.committed(name):
                parts.append(f"{name} committed")
            else:
                parts.append(f"{name} did not commit")
        for retry in self.retries:
            parts.append(f"{retry.transaction} retried {retry.attempts}x "
                         f"({'committed' if retry.succeeded else 'still failing'})")
        text = ", ".join(parts[1:])
        text = f"{parts[0]} {text}"
        if self.invariant is not None:
            text += f"; invariant `{self.invariant}` {'held' if self.invariant_held else 'is FALSE'}"
        if self.state_columns:
            text += f"; state: {self.state_text()}"
        return text

    def to_html(self) -> str:
        return interleaving_html(self)

    def __repr__(self) -> str:  # what Robot logs for ${run} =
        return f"InterleavingResult({self.anomaly} {self.summary()})"


def _cell(value: Any) -> str:
    return html.escape(str(value))


def interleaving_html(result: InterleavingResult) -> str:
    head = ("<table border='1' style='border-collapse:collapse;font-size:90%'>"
            "<tr><th>row</th><th>step</th><th>transaction</th><th>SQL</th><th>result / SQLSTATE</th>"
            "<th>start ms</th><th>duration ms</th><th>notes</th></tr>")
    rows = []
    for r in result.steps:
        colour = {"error": "#fdd", "skipped": "#eee", "rolled back": "#fec"}.get(r.status, "")
        notes = []
        if r.blocks:
            holders = f" held by {', '.join(r.blocked_by)}" if r.blocked_by else ""
            notes.append(f"waited for a lock{holders}")
        if r.attempt > 1:
            notes.append(f"retry attempt {r.attempt}")
        if r.implicit:
            notes.append("implicit")
        if r.note and r.status not in ("skipped", "rolled back"):
            notes.append(r.note)
        duration = "" if r.duration_ms is None else f"{r.duration_ms:.1f}"
        style = f" style='background:{colour}'" if colour else ""
        rows.append(
            f"<tr{style}><td>{r.row}</td><td>{r.step}</td><td>{_cell(r.transaction)}</td>"
            f"<td><code>{_cell(r.sql)}</code></td><td>{_cell(r.outcome())}</td>"
            f"<td>{r.started_ms:.1f}</td><td>{duration}</td><td>{_cell('; '.join(notes))}</td></tr>")
    caption = f"<p><b>{_cell(result.anomaly)}</b> — {_cell(result.summary())}</p>"
    return caption + head + "".join(rows) + "</table>"


# ---------------------------------------------------------------- the engine


class TransactionEngine:
    """Named connections to one database and an exact, journaled order of their steps."""

    def __init__(self, dsn: str, connect_timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.sessions: dict[str, Session] = {}
        self.journal: list[StepResult] = []
        self.captures: dict[str, Any] = {}
        self._clock0 = time.monotonic()
        self._lock = threading.Lock()
        self._monitor = None

    # -- connections

    def open(self, name: str, isolation: IsolationLevel = IsolationLevel.READ_COMMITTED,
             lock_timeout: float = 10.0, deadlock_timeout: float | None = 0.1) -> Session:
        if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
            raise ValueError(f"Transaction name '{name}' must be a word such as T1 or agent_a.")
        if name in self.sessions:
            raise TransactionError(
                f"Transaction {name} is already open; close it first or pick another name.")
        # lock_timeout bounds every lock wait of an unmarked step on the server;
        # statement_timeout is the backstop for everything else
        conn = _connect(self.dsn, connect_timeout=self.connect_timeout, what=f"transaction {name}",
                        application_name=f"crosstalk-{name}"[:63],
                        options=self._options(lock_timeout, 3 * lock_timeout))
        # explicit BEGIN/COMMIT statements, so the journal shows exactly what was sent
        conn.autocommit = True
        deadlock_ms = None
        with conn.cursor() as cur:
            if deadlock_timeout is not None:
                deadlock_ms = max(1, int(deadlock_timeout * 1000))
                try:
                    cur.execute(f"SET deadlock_timeout = '{deadlock_ms}ms'")
                except psycopg2.errors.InsufficientPrivilege:
                    # superuser-only setting: detection still happens, after the server default
                    deadlock_ms = None
        session = Session(name, conn, conn.get_backend_pid(), isolation, deadlock_ms)
        self.sessions[name] = session
        return session

    def _options(self, lock_timeout: float, statement_timeout: float) -> str:
        """Server options for a new connection, keeping those of the DSN (e.g. a search_path)."""
        base = psycopg2.extensions.parse_dsn(self.dsn).get("options", "")
        return (f"{base} -c lock_timeout={max(1, int(lock_timeout * 1000))} "
                f"-c statement_timeout={max(1, int(statement_timeout * 1000))}").strip()

    def session(self, name: str) -> Session:
        try:
            return self.sessions[name]
        except KeyError:
            opened = ", ".join(self.sessions) or "none"
            raise TransactionError(
                f"No transaction named {name} is open (open: {opened}); open it with Open Transactions."
            ) from None

    def close(self, name: str) -> None:
        session = self.sessions.pop(name, None)
        if session:
            if session.pending:
                with suppress(psycopg2.Error):
                    self._monitor_query("SELECT pg_cancel_backend(%s)", (session.pid,))
                session.pending[0].join(5)
            session.close()

    def close_all(self) -> None:
        """Close every session and start a fresh journal (the next scenario's)."""
        for name in list(self.sessions):
            self.close(name)
        self.reset_journal()
        if self._monitor is not None:
            with suppress(psycopg2.Error):
                self._monitor.close()
            self._monitor = None

    def reset_journal(self) -> None:
        with self._lock:
            self.journal = []
            self.captures = {}
            self._clock0 = time.monotonic()

    def _monitor_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        if self._monitor is None or self._monitor.closed:
            # also runs setup SQL: a lock left behind by a failed test must not hang it
            self._monitor = _connect(self.dsn, connect_timeout=self.connect_timeout, what="the lock monitor",
                                     application_name="crosstalk-monitor", options=self._options(10, 60))
            self._monitor.autocommit = True
        with self._monitor.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run `sql` outside every named transaction (autocommit); placeholders allowed."""
        if self._monitor is None or self._monitor.closed:
            self._monitor_query("SELECT 1")
        with self._monitor.cursor() as cur:
            cur.execute(self._fill(sql, self._monitor, step=None))
            if not cur.description:
                return [], []
            return [d.name for d in cur.description], cur.fetchmany(MAX_ROWS)

    def lock_state(self, session: Session) -> tuple[str | None, str | None, list[str]]:
        """(wait_event_type, wait_event, names of blockers) of a session's backend."""
        rows = self._monitor_query(
            "SELECT wait_event_type, wait_event, pg_blocking_pids(pid) FROM pg_stat_activity WHERE pid = %s",
            (session.pid,))
        if not rows:
            return None, None, []
        by_pid = {s.pid: s.name for s in self.sessions.values()}
        blockers = [by_pid.get(pid, f"pid {pid}") for pid in rows[0][2] or []]
        return rows[0][0], rows[0][1], blockers

    # -- steps

    def _now_ms(self) -> float:
        return (time.monotonic() - self._clock0) * 1000

    def _new_result(self, session: Session, sql: str, step: int, *, attempt: int = 1,
                    blocks: bool = False, implicit: bool = False) -> StepResult:
        with self._lock:
            result = StepResult(row=len(self.journal) + 1, step=step, transaction=session.name, sql=sql,
                                segment=session.segment, attempt=attempt, blocks=blocks, implicit=implicit,
                                started_ms=self._now_ms())
            self.journal.append(result)
        return result

    def _fill(self, sql: str, conn: Any, step: int | None) -> str:
        def replace(match: re.Match) -> str:
            name = match[1]
            if name not in self.captures:
                where = f"Step {step}" if step else "The invariant"
                known = ", ".join(sorted(self.captures)) or "none yet"
                raise TransactionError(
                    f"{where} uses {{{{{name}}}}} but no earlier step read a column named {name} "
                    f"(read so far: {known}); name it in a SELECT with 'AS {name}'.")
            with conn.cursor() as cur:
                return cur.mogrify("%s", (self.captures[name],)).decode()
        return _PLACEHOLDER.sub(replace, sql)

    def _begin_if_needed(self, session: Session, sql: str, step: int, attempt: int) -> None:
        if session.failed_step or _is_begin(sql) or _is_end(sql):
            return
        if session.transaction_status == _STATUS.TRANSACTION_STATUS_IDLE:
            begin = f"BEGIN ISOLATION LEVEL {session.isolation.value}"
            self._perform(session, self._new_result(session, begin, step, attempt=attempt, implicit=True))

    def _perform(self, session: Session, result: StepResult) -> StepResult:
        """Execute one statement; never raises for SQL errors (they are the data of a race)."""
        sql = result.sql
        try:
            if session.failed_step is not None:
                failed = session.failed_step
                if not _is_end(sql):
                    result.status = "skipped"
                    result.note = (f"{session.name} already failed at step {failed.step} "
                                   f"with {describe_sqlstate(failed.sqlstate)}")
                    return result
                with session.conn.cursor() as cur:
                    cur.execute("ROLLBACK")
                result.status, result.command = "rolled back", "ROLLBACK"
                result.note = f"the transaction had failed at step {failed.step}"
                session.failed_step = None
                return result
            if _is_begin(sql):
                session.segment += 1
                result.segment = session.segment
            with session.conn.cursor() as cur:
                cur.execute(sql)
                result.command = cur.statusmessage or ""
                if cur.description:
                    result.columns = [d.name for d in cur.description]
                    result.rows = cur.fetchmany(MAX_ROWS)
            result.status = "ok"
            if _keyword(sql) == "COMMIT" and result.command == "ROLLBACK":
                result.status, result.note = "rolled back", "COMMIT of a failed transaction rolls back"
            if result.columns and result.rows:
                with self._lock:
                    self.captures.update(zip(result.columns, result.rows[0], strict=False))
        except psycopg2.Error as error:
            result.status = "error"
            result.sqlstate = error.pgcode
            result.error = _first_line(error).removeprefix("ERROR:").strip()
            if session.conn.closed:
                result.note = "connection closed"
            elif session.transaction_status == _STATUS.TRANSACTION_STATUS_INERROR:
                session.failed_step = result
        finally:
            result.ended_ms = self._now_ms()
        return result

    def execute(self, name: str, sql: str, *, step: int | None = None, attempt: int = 1,
                timeout: float = 10.0) -> StepResult:
        """Run `sql` in transaction `name` on this thread (after its background step, if any)."""
        session = self.session(name)
        if session.pending:
            self.join(name, timeout)
        step = step if step is not None else self._next_step()
        self._begin_if_needed(session, sql, step, attempt)
        result = self._new_result(session, sql, step, attempt=attempt)
        try:
            result.sql = self._fill(sql, session.conn, step)
        except TransactionError:
            result.status, result.ended_ms = "error", self._now_ms()
            raise
        return self._perform(session, result)

    def _next_step(self) -> int:
        return max((r.step for r in self.journal), default=0) + 1

    def start(self, name: str, sql: str, *, step: int | None = None, timeout: float = 10.0) -> StepResult:
        """Run `sql` in transaction `name` in a background thread (a step expected to block)."""
        session = self.session(name)
        if session.pending:
            running = session.pending[1]
            raise TransactionError(
                f"{name} already runs {running.label()} in the background; "
                "wait for it before starting another.")
        step = step if step is not None else self._next_step()
        self._begin_if_needed(session, sql, step, 1)
        result = self._new_result(session, sql, step, blocks=True)
        result.sql = self._fill(sql, session.conn, step)
        thread = threading.Thread(target=self._perform, args=(session, result), daemon=True,
                                  name=f"crosstalk-{name}-step{step}")
        session.pending = (thread, result)
        thread.start()
        return result

    def await_blocked(self, name: str, timeout: float = 5.0, held_by: str | None = None) -> StepResult:
        """Return once `name`'s background step waits for a lock (proven by pg_stat_activity)."""
        session = self.session(name)
        if not session.pending:
            raise TransactionError(f"{name} has no step running in the background; start one with 'blocks'.")
        thread, result = session.pending
        deadline = time.monotonic() + timeout
        while True:
            if not thread.is_alive():
                session.pending = None
                raise TransactionError(
                    f"{name} was expected to wait for a lock at {result.label()}, but it finished after "
                    f"{result.duration_ms or 0:.0f} ms with {result.outcome()}: no other transaction held a "
                    "conflicting lock.")
            wait_type, wait_event, blockers = self.lock_state(session)
            if wait_type == "Lock":
                result.blocked_by = blockers
                if held_by and held_by not in blockers:
                    raise TransactionError(
                        f"{name} waits for a lock at {result.label()}, but it is held by "
                        f"{', '.join(blockers) or 'nobody visible'}, not by {held_by}.")
                return result
            if time.monotonic() >= deadline:
                raise TransactionError(
                    f"{name} did not start waiting for a lock within {timeout:g} s at {result.label()}: "
                    f"its backend shows wait event {wait_type or 'none'}:{wait_event or 'none'}.")
            time.sleep(POLL_INTERVAL)

    def join(self, name: str, timeout: float = 10.0) -> StepResult:
        """Wait for `name`'s background step to finish; cancel it and fail after `timeout`."""
        session = self.session(name)
        if not session.pending:
            raise TransactionError(f"{name} has no step running in the background to wait for.")
        thread, result = session.pending
        thread.join(timeout)
        if thread.is_alive():
            wait_type, wait_event, blockers = self.lock_state(session)
            self._monitor_query("SELECT pg_cancel_backend(%s)", (session.pid,))
            thread.join(5)
            session.pending = None
            held = f" held by {', '.join(blockers)}" if blockers else ""
            raise TransactionError(
                f"{name}'s {result.label()} was still running after {timeout:g} s, waiting for "
                f"{wait_type or 'nothing'}:{wait_event or '-'}{held}; it was cancelled.")
        session.pending = None
        return result

    def commit(self, name: str, timeout: float = 10.0) -> StepResult:
        return self.execute(name, "COMMIT", timeout=timeout)

    def rollback(self, name: str, timeout: float = 10.0) -> StepResult:
        return self.execute(name, "ROLLBACK", timeout=timeout)

    # -- whole interleavings

    # complexity accepted: one ordered step loop (begin, step, wait, lock report, commit,
    # invariant); splitting it scatters the timing that makes the interleaving exact
    def run(self, steps: Sequence[str | Step], *, isolation: IsolationLevel | None = None,  # noqa: C901
            timeout: float = 10.0, lock_timeout: float | None = None, deadlock_timeout: float | None = 0.1,
            invariant: str | None = None, state: str | None = None, anomaly: str = "anomaly",
            retry_losers: bool = False, max_retries: int = 3) -> InterleavingResult:
        """Execute `steps` in exactly this order and judge the outcome.

        Transactions named in the steps but not open yet are opened at `isolation`.
        """
        parsed = [s if isinstance(s, Step) else Step.parse(s) for s in steps]
        if not parsed:
            raise ValueError("Run Interleaving needs at least one step such as 'T1: SELECT 1'.")
        level = isolation or IsolationLevel.READ_COMMITTED
        for name in dict.fromkeys(s.transaction for s in parsed):
            if name not in self.sessions:
                self.open(name, level, lock_timeout or timeout, deadlock_timeout)
            elif isolation is not None:
                self.sessions[name].isolation = isolation
        self.reset_journal()
        started = time.monotonic()
        try:
            for number, step in enumerate(parsed, start=1):
                if step.blocks:
                    self.start(step.transaction, step.sql, step=number, timeout=timeout)
                    self.await_blocked(step.transaction, timeout)
                else:
                    self.execute(step.transaction, step.sql, step=number, timeout=timeout)
            for session in list(self.sessions.values()):
                if session.pending:
                    self.join(session.name, timeout)
        except BaseException:
            self._abandon()
            raise
        self._close_open_transactions(len(parsed))
        result = InterleavingResult(
            isolation={n: self.sessions[n].isolation.value
                       for n in dict.fromkeys(s.transaction for s in parsed)},
            steps=self.journal, anomaly=anomaly, invariant=invariant)
        if retry_losers:
            self._retry_losers(result, parsed, max_retries, timeout)
        if invariant is not None:
            _, rows = self.query(invariant)
            result.invariant_held = bool(rows and rows[0] and rows[0][0])
        if state is not None:
            result.state_columns, result.state_rows = self.query(state)
        result.steps = list(self.journal)
        result.elapsed_ms = (time.monotonic() - started) * 1000
        return result

    def _abandon(self) -> None:
        for session in self.sessions.values():
            if session.pending:
                with suppress(Exception):
                    self._monitor_query("SELECT pg_cancel_backend(%s)", (session.pid,))
                session.pending[0].join(5)
                session.pending = None
            with suppress(psycopg2.Error):
                if session.transaction_status != _STATUS.TRANSACTION_STATUS_IDLE:
                    session.conn.cursor().execute("ROLLBACK")
            session.failed_step = None

    def _close_open_transactions(self, last_step: int) -> None:
        for session in self.sessions.values():
            open_ = session.transaction_status != _STATUS.TRANSACTION_STATUS_IDLE
            if session.failed_step is not None or open_:
                result = self._new_result(session, "ROLLBACK", last_step, implicit=True)
                result.note = "left open by the steps"
                self._perform(session, result)

    def _retry_losers(self, result: InterleavingResult, parsed: list[Step], max_retries: int,
                      timeout: float) -> None:
        first = [r for r in self.journal if not r.implicit]
        for name, sqlstate in result.losers.items():
            failed = next(r for r in first if r.transaction == name and r.failed)
            segment_steps = [(r.step, parsed[r.step - 1]) for r in first
                             if r.transaction == name and r.segment == failed.segment]
            succeeded = False
            attempt = 1
            while attempt <= max_retries and not succeeded:
                attempt += 1
                for number, step in segment_steps:
                    self.execute(name, step.sql, step=number, attempt=attempt, timeout=timeout)
                succeeded = self.sessions[name].transaction_status == _STATUS.TRANSACTION_STATUS_IDLE and all(
                    r.status == "ok" for r in self.journal if r.transaction == name and r.attempt == attempt)
                if not succeeded:
                    self._close_open_transactions(segment_steps[-1][0])
            result.retries.append(Retry(name, failed.segment, sqlstate, attempt - 1, succeeded))

    def manual_result(self, anomaly: str = "interleaving", invariant: str | None = None,
                      state: str | None = None) -> InterleavingResult:
        """The journal of per-connection keyword calls as an InterleavingResult."""
        result = InterleavingResult(isolation={n: s.isolation.value for n, s in self.sessions.items()},
                                    steps=list(self.journal), anomaly=anomaly, invariant=invariant)
        if invariant is not None:
            _, rows = self.query(invariant)
            result.invariant_held = bool(rows and rows[0] and rows[0][0])
        if state is not None:
            result.state_columns, result.state_rows = self.query(state)
        return result


# ---------------------------------------------------------------- connection pool


class PoolExhausted(TransactionError):
    pass


@dataclass
class PoolStats:
    requests: int = 0
    waited: int = 0
    refused: int = 0
    max_waiting: int = 0
    wait_ms: list[float] = field(default_factory=list)


class QueuedPool:
    """ThreadedConnectionPool with a bounded FIFO wait queue instead of instant PoolError.

    With `queueing` off it behaves like the bare psycopg2 pool (refuses at once when
    exhausted), which is what the report compares against.
    """

    def __init__(self, dsn: str, size: int, *, queueing: bool = True, queue_timeout: float = 10.0,
                 max_queue: int | None = None, connect_timeout: float = 5.0) -> None:
        if size < 1:
            raise ValueError(f"Pool size must be at least 1, got {size}.")
        self.dsn, self.size, self.queueing = dsn, size, queueing
        self.queue_timeout, self.max_queue = queue_timeout, max_queue
        try:
            self._pool = psycopg2.pool.ThreadedConnectionPool(
                # minconn = size: psycopg2 closes returned connections beyond minconn,
                # which would silently turn the pool into connect-per-request
                size, size, dsn, connect_timeout=max(1, round(connect_timeout)),
                application_name="crosstalk-pool")
        except psycopg2.OperationalError as error:
            raise TransactionError(f"Cannot open a pool to {mask_dsn(dsn)}: {_first_line(error)}") from None
        self._cond = threading.Condition()
        self._in_use = 0
        self._queue: list[object] = []  # FIFO tickets: the head is served first
        self.stats = PoolStats()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._in_use

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    def _reserve(self, timeout: float, on_asked: Callable[[], None] | None = None) -> float:
        """Reserve a slot; returns ms waited.  Raises PoolExhausted.

        `on_asked` is called once the caller is served, queued or refused.
        """
        start = time.monotonic()
        asked = on_asked or (lambda: None)
        with self._cond:
            self.stats.requests += 1
            if self._in_use < self.size and not self._queue:
                self._in_use += 1
                asked()
                return 0.0
            if not self.queueing or (self.max_queue is not None and len(self._queue) >= self.max_queue):
                self.stats.refused += 1
                asked()
                why = "queueing is off" if not self.queueing else f"{len(self._queue)} callers already queued"
                raise PoolExhausted(
                    f"Pool of {self.size} connections exhausted ({self._in_use} in use, {why}).")
            ticket = object()
            self._queue.append(ticket)
            self.stats.waited += 1
            self.stats.max_waiting = max(self.stats.max_waiting, len(self._queue))
            asked()
            deadline = start + timeout
            while not (self._queue[0] is ticket and self._in_use < self.size):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._queue.remove(ticket)
                    self.stats.refused += 1
                    self._cond.notify_all()
                    raise PoolExhausted(
                        f"Waited {timeout:g} s for one of {self.size} pooled connections; "
                        f"{self._in_use} in use, {len(self._queue)} callers still queued.")
                self._cond.wait(remaining)
            self._queue.pop(0)
            self._in_use += 1
            waited = (time.monotonic() - start) * 1000
            self.stats.wait_ms.append(waited)
            self._cond.notify_all()
            return waited

    def _release_slot(self) -> None:
        with self._cond:
            self._in_use -= 1
            self._cond.notify_all()

    @contextmanager
    def connection(self, timeout: float | None = None,
                   on_asked: Callable[[], None] | None = None) -> Iterator[Any]:
        self._reserve(self.queue_timeout if timeout is None else timeout, on_asked)
        try:
            try:
                conn = self._pool.getconn()
            except psycopg2.pool.PoolError as error:
                # only reachable if someone bypasses the queue: report it the same way
                with self._cond:
                    self.stats.refused += 1
                raise PoolExhausted(f"psycopg2 pool refused: {error}") from None
            broken = False
            try:
                yield conn
            except psycopg2.Error:
                broken = bool(conn.closed)
                raise
            finally:
                if not conn.closed:
                    with suppress(psycopg2.Error):
                        conn.rollback()
                self._pool.putconn(conn, close=broken or bool(conn.closed))
        finally:
            self._release_slot()

    def close(self) -> None:
        with suppress(psycopg2.Error):
            self._pool.closeall()


@dataclass(repr=False)
class PoolReport:
    label: str
    pool_size: int
    queueing: bool
    operations: int
    succeeded: int
    failed: int
    waited: int
    refused: int
    max_waiting: int
    backends_used: int
    in_use_after: int
    elapsed_ms: float
    wait_p50_ms: float
    wait_max_ms: float
    rows_written: int | None = None
    errors: list[str] = field(default_factory=list)
    isolation: str = "server default"
    retries: dict[str, int] = field(default_factory=dict)  # SQLSTATE -> retries it caused

    @property
    def success_rate(self) -> float:
        return 100.0 * self.succeeded / self.operations if self.operations else 0.0

    @property
    def exhausted(self) -> bool:
        return self.waited > 0 or self.refused > 0

    def summary(self) -> str:
        return (f"{self.label}: {self.succeeded}/{self.operations} operations succeeded "
                f"({self.success_rate:.0f} %) through a pool of {self.pool_size} "
                f"({'queueing' if self.queueing else 'no queue'}); {self.waited} waited, "
                f"{self.refused} refused, max queue {self.max_waiting}, "
                f"wait p50 {self.wait_p50_ms:.0f} ms / max {self.wait_max_ms:.0f} ms, "
                f"{self.backends_used} backends, {self.in_use_after} still in use, {self.elapsed_ms:.0f} ms"
                + (f", retries {self.retries_text()}" if self.retries else ""))

    def retries_text(self) -> str:
        return ", ".join(f"{n} after {describe_sqlstate(code)}" for code, n in sorted(self.retries.items()))

    def __repr__(self) -> str:
        return f"PoolReport({self.summary()})"

    def to_html(self) -> str:
        rows = [("operations", self.operations), ("succeeded", self.succeeded), ("failed", self.failed),
                ("success rate", f"{self.success_rate:.1f} %"), ("pool size", self.pool_size),
                ("queueing", self.queueing), ("had to wait", self.waited), ("refused", self.refused),
                ("longest queue", self.max_waiting), ("wait p50 ms", f"{self.wait_p50_ms:.1f}"),
                ("wait max ms", f"{self.wait_max_ms:.1f}"), ("server backends used", self.backends_used),
                ("rows written", self.rows_written), ("connections in use after", self.in_use_after),
                ("isolation", self.isolation), ("retries", self.retries_text() or "none"),
                ("elapsed ms", f"{self.elapsed_ms:.0f}")]
        body = "".join(f"<tr><th align='left'>{_cell(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows)
        errors = "".join(f"<li>{_cell(e)}</li>" for e in self.errors[:10])
        table = f"<table border='1' style='border-collapse:collapse'>{body}</table>"
        return (f"<p><b>{_cell(self.label)}</b></p>{table}"
                + (f"<p>first errors:</p><ul>{errors}</ul>" if errors else ""))


# complexity accepted: arrival barrier, workers and the per-outcome tally share one lock-guarded state
def run_concurrent_operations(  # noqa: C901
        pool: QueuedPool, operations: int, work: Callable[[Any, int], Any], *, label: str = "batch",
        hold: float = 0.05, arrival_timeout: float = 10.0, join_timeout: float = 60.0,
        isolation: IsolationLevel | None = None, max_retries: int = 0) -> PoolReport:
    """Run `operations` threads that each borrow a connection and call `work(conn, index)`.

    All threads start together (barrier).  A caller that got a connection keeps it
    until every caller has asked for one, then `hold` seconds more, so demand
    really exceeds supply at one instant and the counts are exact: with size S and
    N operations, N - S callers wait (queueing) or are refused (no queue).

    The hold and `work` form one transaction at `isolation`; one refused with
    40001/40P01 is rolled back and run again (without the hold) up to
    `max_retries` times on the same connection.
    """
    stats_before = (pool.stats.waited, pool.stats.refused, len(pool.stats.wait_ms))
    pool.stats.max_waiting = 0
    barrier = threading.Barrier(operations)
    arrived = 0
    arrived_lock = threading.Lock()
    everyone_asked = threading.Event()
    outcomes: list[str | None] = [None] * operations
    backends: set[int] = set()
    retries: dict[str, int] = {}
    retries_lock = threading.Lock()

    def arrive() -> None:
        nonlocal arrived
        with arrived_lock:
            arrived += 1
            if arrived == operations:
                everyone_asked.set()

    def worker(index: int) -> None:
        try:
            barrier.wait(arrival_timeout)
        except threading.BrokenBarrierError:
            outcomes[index] = "threads did not start together"
            return
        try:
            with pool.connection(on_asked=arrive) as conn:
                # always set: pooled connections keep the level of their previous borrower
                conn.set_session(isolation_level=isolation.value if isolation else "DEFAULT")
                everyone_asked.wait(arrival_timeout)
                attempt = 0
                while True:
                    try:
                        with conn.cursor() as cur:
                            pause = 0 if attempt else hold
                            cur.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (pause,))
                            backends.add(cur.fetchone()[0])
                        work(conn, index)
                        conn.commit()
                        break
                    except psycopg2.Error as error:
                        if conn.closed or error.pgcode not in RETRYABLE_SQLSTATES or attempt >= max_retries:
                            raise
                        conn.rollback()
                        attempt += 1
                        with retries_lock:
                            retries[error.pgcode] = retries.get(error.pgcode, 0) + 1
            outcomes[index] = "ok"
        except PoolExhausted as error:
            outcomes[index] = f"refused: {error}"
        except psycopg2.Error as error:
            outcomes[index] = f"{describe_sqlstate(error.pgcode)}: {_first_line(error)}"
        except Exception as error:
            outcomes[index] = f"{type(error).__name__}: {error}"

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"crosstalk-pool-{i}")
               for i in range(operations)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + join_timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    elapsed = (time.monotonic() - started) * 1000
    waits = pool.stats.wait_ms[stats_before[2]:]
    errors = [o for o in outcomes if o and o != "ok"]
    if hung:
        errors.insert(0, f"{hung} operations still running after {join_timeout:g} s")
    succeeded = sum(o == "ok" for o in outcomes)
    return PoolReport(
        label=label, pool_size=pool.size, queueing=pool.queueing, operations=operations,
        succeeded=succeeded, failed=operations - succeeded,
        waited=pool.stats.waited - stats_before[0], refused=pool.stats.refused - stats_before[1],
        max_waiting=pool.stats.max_waiting, backends_used=len(backends), in_use_after=pool.in_use,
        elapsed_ms=elapsed, wait_p50_ms=percentile(waits, 50, empty=0.0), wait_max_ms=max(waits, default=0.0),
        errors=errors, isolation=isolation.value if isolation else "server default", retries=retries)
