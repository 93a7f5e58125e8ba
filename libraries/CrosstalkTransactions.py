"""Database transaction races as keywords: isolation anomalies, deadlocks, pool exhaustion.

Everything runs in a scratch database that the suite creates on the server of
``${BACKEND_DATABASE_URL}`` and drops again, so the platform's data is never touched.
The engine is `crosstalk.transactions`; this module converts arguments, logs and asserts.
"""

from __future__ import annotations

import html
from datetime import timedelta
from typing import Any

import psycopg2
from crosstalk import context
from crosstalk.transactions import (
    InterleavingResult,
    IsolationLevel,
    PoolReport,
    QueuedPool,
    ScratchDatabase,
    StepResult,
    TransactionEngine,
    TransactionError,
    describe_sqlstate,
    drop_stale_scratch_databases,
    mask_dsn,
    run_concurrent_operations,
)
from robot.api import logger
from robot.api.deco import keyword

__version__ = "0.1.0"

PROBE_TABLE = "crosstalk_pool_probe"


class CrosstalkTransactions:
    """Two or more named PostgreSQL transactions interleaved in an exact order.

    = Steps =

    An interleaving is a list of steps ``NAME: SQL``; they run one after the other,
    each in the transaction of its connection.  A transaction begins implicitly
    (``BEGIN ISOLATION LEVEL ...``) at its connection's first statement and ends at
    ``NAME: COMMIT`` or ``NAME: ROLLBACK``.  A step that must wait for another
    transaction's lock is written ``NAME blocks: SQL``: it runs in a background
    thread and the keyword proves from ``pg_stat_activity`` that it waits for a lock
    before the next step runs.  An unmarked step that waits longer than
    ``lock_timeout`` fails with SQLSTATE 55P03.

    A SELECT column named with ``AS name`` can be used by later steps as
    ``{{name}}`` (the application's read-modify-write), e.g.
    ``T1: UPDATE budget SET amount = {{t1_amount}} + 1``.

    = Judging anomalies =

    ``invariant`` is a query returning one boolean, evaluated after all steps.  An
    anomaly *occurred* when the invariant is false and PostgreSQL refused no
    transaction (no SQLSTATE of class 40); a refusal is how PostgreSQL *prevents*
    it.  Every run logs an HTML table: row, step, transaction, SQL, result or
    SQLSTATE, start and duration in ms, and which transaction held the awaited lock.
    """

    ROBOT_LIBRARY_SCOPE = "SUITE"
    ROBOT_LIBRARY_VERSION = __version__
    ROBOT_LIBRARY_DOC_FORMAT = "ROBOT"

    def __init__(self) -> None:
        self._scratch: ScratchDatabase | None = None
        self._engine: TransactionEngine | None = None
        self._pool: QueuedPool | None = None
        self._batches = 0

    # ------------------------------------------------------------ scratch database

    def create_scratch_database(self, server_url: str | None = None, prefix: str = "crosstalk_scratch",
                                connect_timeout: timedelta = timedelta(seconds=5)) -> str:
        """Creates a uniquely named database on the server of ``server_url`` and connects to it.

        ``server_url`` defaults to ``${BACKEND_DATABASE_URL}`` (then the environment
        variable of that name).  The name holds time, process id and randomness, so
        parallel pabot processes never share one.  When the user may not create
        databases, a scratch schema in the target database is used instead (warned).
        Returns the database (or schema) name.

        Example:
        | ${name} = | Create Scratch Database | ${BACKEND_DATABASE_URL} |
        | Create Scratch Database | prefix=budget_races |
        """
        url = server_url or self._variable("BACKEND_DATABASE_URL")
        if not url:
            raise TransactionError(
                "BACKEND_DATABASE_URL is not set: run with --variable "
                "BACKEND_DATABASE_URL:postgresql://user@host:port/db or from suites/__init__.robot.")
        if self._scratch:
            raise TransactionError(f"Scratch database {self._scratch.name} already exists in this suite; "
                                   "drop it first.")
        seconds = connect_timeout.total_seconds()
        self._scratch = ScratchDatabase.create(url, prefix, seconds)
        self._engine = TransactionEngine(self._scratch.dsn, seconds)
        if self._scratch.schema_only:
            logger.warn(f"Not allowed to create databases on {mask_dsn(url)}: using scratch schema "
                        f"{self._scratch.name} in its database instead.")
        logger.info(f"Created scratch {self._scratch.kind} {self._scratch.name} on {mask_dsn(url)}.")
        return self._scratch.name

    def drop_scratch_database(self) -> None:
        """Closes every transaction and pool of this suite and drops its scratch database.

        Leftover sessions on the database are terminated first.  Does nothing when no
        scratch database was created, so it is safe in a suite teardown.

        Example:
        | [Teardown] | Drop Scratch Database |
        """
        if self._pool:
            self.close_connection_pool()
        if self._engine:
            self._engine.close_all()
            self._engine = None
        if self._scratch:
            self._scratch.drop()
            logger.info(f"Dropped scratch {self._scratch.kind} {self._scratch.name}.")
            self._scratch = None

    def drop_stale_scratch_databases(self, server_url: str | None = None, prefix: str = "crosstalk_scratch",
                                     older_than: timedelta = timedelta(hours=6)) -> list[str]:
        """Drops scratch databases that killed runs left behind (older than ``older_than``).

        Only names made by `Create Scratch Database` with this ``prefix`` are touched.
        Returns the dropped names.

        Example:
        | Drop Stale Scratch Databases | older_than=1 hour |
        """
        url = server_url or self._variable("BACKEND_DATABASE_URL")
        if not url:
            raise TransactionError("BACKEND_DATABASE_URL is not set: pass server_url or set the variable.")
        dropped = drop_stale_scratch_databases(url, prefix, older_than.total_seconds())
        logger.info(f"Dropped {len(dropped)} stale scratch databases: {', '.join(dropped) or 'none'}.")
        return dropped

    @keyword("Execute Scratch SQL")
    def execute_scratch_sql(self, sql: str) -> Any:
        """Runs ``sql`` in the scratch database outside every named transaction (autocommit).

        Use it for schema and seed data.  Returns the first value of the first row, or None.

        Example:
        | Execute Scratch SQL | CREATE TABLE budget (id int PRIMARY KEY, amount int NOT NULL) |
        | ${amount} = | Execute Scratch SQL | SELECT amount FROM budget WHERE id = 1 |
        """
        try:
            columns, rows = self._require_engine().query(sql)
        except psycopg2.Error as error:
            raise TransactionError(f"Scratch SQL failed with {describe_sqlstate(error.pgcode)}: "
                                   f"{str(error).strip().splitlines()[0]} — SQL: {sql}") from None
        logger.info(f"<code>{_escape(sql)}</code> → {_escape(rows[:5] if columns else 'ok')}", html=True)
        return rows[0][0] if rows and rows[0] else None

    # ------------------------------------------------------------ named transactions

    def open_transactions(self, *names: str, isolation: IsolationLevel = IsolationLevel.READ_COMMITTED,
                          lock_timeout: timedelta = timedelta(seconds=10),
                          deadlock_timeout: timedelta = timedelta(milliseconds=100)) -> None:
        """Opens one connection per name to the scratch database, each at ``isolation``.

        ``lock_timeout`` bounds every lock wait on the server (SQLSTATE 55P03 after it).
        ``deadlock_timeout`` is set per session so deadlocks are found fast; it needs
        a superuser, otherwise the server default applies (logged).

        Example:
        | Open Transactions | T1 | T2 | isolation=REPEATABLE READ |
        """
        if not names:
            raise ValueError("Open Transactions needs at least one name, e.g. T1 T2.")
        engine = self._require_engine()
        if not engine.sessions:
            engine.reset_journal()  # a new scenario: Get Interleaving shows only its steps
        for name in names:
            session = engine.open(name, isolation, lock_timeout.total_seconds(),
                                  deadlock_timeout.total_seconds())
            deadlock = (f"deadlock_timeout {session.deadlock_timeout_ms} ms" if session.deadlock_timeout_ms
                        else "server default deadlock_timeout (not a superuser)")
            logger.info(f"Opened {name} (backend pid {session.pid}) at {isolation.value}, {deadlock}.")

    def close_all_transactions(self) -> None:
        """Rolls back and closes every named transaction (a test teardown).

        Example:
        | [Teardown] | Close All Transactions |
        """
        if self._engine:
            self._engine.close_all()

    def run_interleaving(self, *steps: str, isolation: IsolationLevel | None = None,
                         anomaly: str = "interleaving", invariant: str | None = None,
                         state: str | None = None,
                         retry_losers: bool = False, max_retries: int = 3,
                         timeout: timedelta = timedelta(seconds=10)) -> InterleavingResult:
        """Runs ``steps`` in exactly this order and returns what happened.

        Transactions not yet open are opened at ``isolation`` (default READ COMMITTED);
        ``isolation`` also overrides the level of already open ones.  ``timeout``
        bounds each wait for a ``blocks`` step.  ``invariant`` (a boolean query) and
        ``state`` (any query, shown in the log and messages) run after the steps.
        With ``retry_losers`` every transaction refused with 40001 or 40P01 is run
        again, alone, up to ``max_retries`` times.  ``anomaly`` names the scenario in
        logs and failures.

        The result knows ``losers`` (name → SQLSTATE), ``committed(name)``,
        ``reads(name)``, ``invariant_held``, ``retries`` and every ``steps`` row.

        Example:
        | ${run} = | Run Interleaving |
        | ... | T1: SELECT amount AS t1_amount FROM budget WHERE id = 1 |
        | ... | T2: SELECT amount AS t2_amount FROM budget WHERE id = 1 |
        | ... | T1: UPDATE budget SET amount = {{t1_amount}} + 1 WHERE id = 1 |
        | ... | T1: COMMIT |
        | ... | T2: UPDATE budget SET amount = {{t2_amount}} + 1 WHERE id = 1 |
        | ... | T2: COMMIT |
        | ... | isolation=READ COMMITTED | anomaly=lost update (P4) |
        | ... | invariant=SELECT amount = 12 FROM budget WHERE id = 1 |
        """
        engine = self._require_engine()
        try:
            result = engine.run(steps, isolation=isolation, timeout=timeout.total_seconds(),
                                invariant=invariant, state=state, anomaly=anomaly,
                                retry_losers=retry_losers, max_retries=max_retries)
        except TransactionError:
            self._log_journal(anomaly)
            raise
        self._log_result(result)
        return result

    def execute_in_transaction(self, name: str, sql: str, expect_sqlstate: str | None = None,
                               timeout: timedelta = timedelta(seconds=10)) -> StepResult:
        """Runs one statement in transaction ``name`` now (after its background step, if any).

        Fails when the statement fails, unless ``expect_sqlstate`` names the SQLSTATE it
        must fail with (then it fails when the statement succeeds).  Returns the step
        result (``value``, ``rows``, ``columns``, ``sqlstate``).

        Example:
        | Execute In Transaction | T1 | UPDATE budget SET amount = amount + 1 WHERE id = 1 |
        | ${step} = | Execute In Transaction | T2 | SELECT amount FROM budget WHERE id = 1 |
        | Execute In Transaction | T2 | UPDATE budget SET amount = 0 WHERE id = 1 | expect_sqlstate=40001 |
        """
        result = self._require_engine().execute(name, sql, timeout=timeout.total_seconds())
        self._log_step(result)
        return self._check_step(result, expect_sqlstate)

    def start_in_background(self, name: str, sql: str) -> StepResult:
        """Starts one statement of ``name`` in a background thread: a step expected to wait for a lock.

        Follow it with `Transaction Should Be Waiting For Lock` and finish it with
        `Wait For Background Step` (or any later statement of the same transaction).

        Example:
        | Start In Background | T2 | UPDATE budget SET amount = amount + 1 WHERE id = 1 |
        """
        result = self._require_engine().start(name, sql)
        logger.info(f"{name} started in the background: <code>{_escape(result.sql)}</code>", html=True)
        return result

    def transaction_should_be_waiting_for_lock(self, name: str, held_by: str | None = None,
                                               timeout: timedelta = timedelta(seconds=5)) -> StepResult:
        """Passes once ``pg_stat_activity`` shows ``name``'s backend waiting for a lock.

        With ``held_by`` the lock must be held by that transaction
        (``pg_blocking_pids``).  Fails when the step finished instead or did not wait
        within ``timeout``.

        Example:
        | Transaction Should Be Waiting For Lock | T2 | held_by=T1 |
        """
        result = self._require_engine().await_blocked(name, timeout.total_seconds(), held_by)
        logger.info(f"{name} waits for a lock held by {', '.join(result.blocked_by) or 'unknown'}.")
        return result

    def wait_for_background_step(self, name: str, expect_sqlstate: str | None = None,
                                 timeout: timedelta = timedelta(seconds=10)) -> StepResult:
        """Waits for ``name``'s background step to finish and returns its result.

        After ``timeout`` the statement is cancelled and the keyword fails, naming
        what the backend waited for and who held it.

        Example:
        | ${step} = | Wait For Background Step | T2 | timeout=5s |
        """
        result = self._require_engine().join(name, timeout.total_seconds())
        self._log_step(result)
        return self._check_step(result, expect_sqlstate)

    def commit_transaction(self, name: str, expect_sqlstate: str | None = None,
                           timeout: timedelta = timedelta(seconds=10)) -> StepResult:
        """Commits ``name``; fails if the commit fails, unless ``expect_sqlstate`` is that failure.

        Example:
        | Commit Transaction | T1 |
        | Commit Transaction | T2 | expect_sqlstate=40001 |
        """
        return self.execute_in_transaction(name, "COMMIT", expect_sqlstate, timeout)

    def rollback_transaction(self, name: str, timeout: timedelta = timedelta(seconds=10)) -> StepResult:
        """Rolls back ``name``.

        Example:
        | Rollback Transaction | T1 |
        """
        return self.execute_in_transaction(name, "ROLLBACK", None, timeout)

    def get_interleaving(self, anomaly: str = "interleaving", invariant: str | None = None,
                         state: str | None = None) -> InterleavingResult:
        """Returns (and logs) the steps run by the per-transaction keywords since the last interleaving.

        ``invariant`` and ``state`` work as in `Run Interleaving`.

        Example:
        | ${run} = | Get Interleaving | anomaly=row lock wait | invariant=SELECT amount = 12 FROM budget |
        """
        result = self._require_engine().manual_result(anomaly, invariant, state)
        self._log_result(result)
        return result

    # ------------------------------------------------------------ assertions

    def anomaly_should_have_occurred(self, result: InterleavingResult) -> None:
        """Passes when the anomaly happened: invariant false and no transaction refused.

        Example:
        | Anomaly Should Have Occurred | ${run} |
        """
        if not result.anomaly_occurred:
            why = (", ".join(f"{n} was refused with {describe_sqlstate(s)}" for n, s in result.losers.items())
                   or f"the invariant `{result.invariant}` held")
            raise TransactionError(
                f"Expected {result.anomaly} to happen {_levels(result)}, but it was prevented: {why}. "
                f"({result.summary()})")
        logger.info(f"{result.anomaly} happened as expected: {result.summary()}")

    def anomaly_should_have_been_prevented(self, result: InterleavingResult, sqlstate: str | None = None,
                                           loser: str | None = None) -> None:
        """Passes when the anomaly did not happen.

        With ``sqlstate`` PostgreSQL must have refused a transaction with it, with
        ``loser`` that transaction must be the refused one.

        Example:
        | Anomaly Should Have Been Prevented | ${run} | sqlstate=40001 | loser=T2 |
        """
        if result.anomaly_occurred:
            raise TransactionError(
                f"{result.anomaly} happened {_levels(result)}: every transaction committed and the "
                f"invariant `{result.invariant}` is false"
                + (f" (state: {result.state_text()})" if result.state_columns else "") + ".")
        if sqlstate and sqlstate not in result.losers.values():
            raise TransactionError(
                f"{result.anomaly} was avoided {_levels(result)}, but not by SQLSTATE "
                f"{describe_sqlstate(sqlstate)}: {result.summary()}")
        if loser and loser not in result.losers:
            raise TransactionError(
                f"{result.anomaly}: expected {loser} to be refused {_levels(result)}, "
                f"but the refused transactions are: {', '.join(result.losers) or 'none'}. "
                f"({result.summary()})")
        logger.info(f"{result.anomaly} prevented: {result.summary()}")

    def transaction_should_have_lost(self, result: InterleavingResult, name: str,
                                     sqlstate: str | None = None) -> str:
        """Passes when PostgreSQL refused ``name`` (class 40 SQLSTATE); returns the SQLSTATE.

        Example:
        | ${code} = | Transaction Should Have Lost | ${run} | T2 | sqlstate=40001 |
        """
        if name not in result.losers:
            raise TransactionError(f"{result.anomaly}: expected {name} to be refused {_levels(result)}, "
                                   f"but it was not. ({result.summary()})")
        actual = result.losers[name]
        if sqlstate and actual != sqlstate:
            raise TransactionError(f"{result.anomaly}: {name} was refused with {describe_sqlstate(actual)}, "
                                   f"expected {describe_sqlstate(sqlstate)}.")
        return actual

    def transaction_should_have_committed(self, result: InterleavingResult, name: str) -> None:
        """Passes when the last transaction of ``name`` ended with a successful COMMIT.

        Example:
        | Transaction Should Have Committed | ${run} | T1 |
        """
        if not result.committed(name):
            raise TransactionError(f"{result.anomaly}: expected {name} to commit {_levels(result)}, "
                                   f"but it did not. ({result.summary()})")

    def invariant_should_hold(self, result: InterleavingResult) -> None:
        """Passes when the interleaving's invariant query returned true after all steps (and retries).

        Example:
        | Invariant Should Hold | ${run} |
        """
        if result.invariant is None:
            raise TransactionError("The interleaving had no invariant: pass invariant=SELECT <boolean>.")
        if not result.invariant_held:
            state = f" (state: {result.state_text()})" if result.state_columns else ""
            raise TransactionError(f"{result.anomaly}: invariant `{result.invariant}` is false "
                                   f"{_levels(result)}{state}. ({result.summary()})")

    def losers_should_have_been_retried(self, result: InterleavingResult,
                                        sqlstate: str | None = None) -> None:
        """Passes when at least one transaction was refused and every refused one committed on retry.

        With ``sqlstate`` the refusals must have been that SQLSTATE (e.g. 40P01 for a deadlock).

        Example:
        | Losers Should Have Been Retried | ${run} | sqlstate=40P01 |
        """
        if not result.retries:
            raise TransactionError(f"{result.anomaly}: no transaction was refused and retried "
                                   f"{_levels(result)}. ({result.summary()})")
        for retry in result.retries:
            if sqlstate and retry.sqlstate != sqlstate:
                raise TransactionError(f"{result.anomaly}: {retry.transaction} was refused with "
                                       f"{describe_sqlstate(retry.sqlstate)}, "
                                       f"expected {describe_sqlstate(sqlstate)}.")
            if not retry.succeeded:
                raise TransactionError(f"{result.anomaly}: {retry.transaction} still failed after "
                                       f"{retry.attempts} retries. ({result.summary()})")

    def transaction_should_only_have_read(self, result: InterleavingResult, name: str, expected: Any) -> None:
        """Passes when every SELECT of ``name`` returned ``expected`` as its first value.

        Example:
        | Transaction Should Only Have Read | ${run} | T2 | ${10} |
        """
        reads = result.reads(name)
        if not reads:
            raise TransactionError(f"{result.anomaly}: {name} read nothing {_levels(result)}.")
        wrong = [value for value in reads if str(value) != str(expected)]
        if wrong:
            raise TransactionError(f"{result.anomaly}: {name} read {wrong} {_levels(result)}, expected only "
                                   f"{expected!r} (all reads: {reads}).")

    # ------------------------------------------------------------ connection pool

    def open_connection_pool(self, size: int = 5, queueing: bool = True,
                             queue_timeout: timedelta = timedelta(seconds=10),
                             max_queue: int | None = None) -> None:
        """Opens a ``psycopg2`` ThreadedConnectionPool of ``size`` connections to the scratch database.

        With ``queueing`` callers beyond ``size`` wait in a FIFO queue (at most
        ``max_queue`` of them) for up to ``queue_timeout``; without it they are
        refused at once, as the bare psycopg2 pool does.

        Example:
        | Open Connection Pool | size=5 | queueing=${True} | queue_timeout=10s |
        """
        if self._pool:
            self.close_connection_pool()
        engine = self._require_engine()
        engine.query(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} "
                     "(batch int NOT NULL, op int NOT NULL, backend_pid int NOT NULL, "
                     "PRIMARY KEY (batch, op))")
        self._pool = QueuedPool(engine.dsn, size, queueing=queueing,
                                queue_timeout=queue_timeout.total_seconds(), max_queue=max_queue,
                                connect_timeout=engine.connect_timeout)
        logger.info(f"Opened a pool of {size} connections ({'queueing' if queueing else 'no queue'}).")

    def run_concurrent_database_operations(self, operations: int = 20,
                                           hold: timedelta = timedelta(milliseconds=50),
                                           label: str = "batch", sql: str | None = None,
                                           isolation: IsolationLevel | None = None,
                                           max_retries: int = 0) -> PoolReport:
        """Runs ``operations`` threads at once, each borrowing a pooled connection to write one row.

        A caller that got a connection keeps it until every caller has asked for
        one, plus ``hold``, so demand really exceeds supply.  Each operation inserts
        a row into a probe table and runs ``sql`` (if given) in the same transaction
        at ``isolation``; an operation refused with 40001/40P01 is retried up to
        ``max_retries`` times.  The report counts the rows actually written.
        Returns a report with ``success_rate``, ``waited``, ``refused``,
        ``max_waiting``, ``rows_written``, ``retries`` and ``in_use_after``; logs it
        as a table.

        Example:
        | ${report} = | Run Concurrent Database Operations | operations=20 | hold=50ms |
        | ${report} = | Run Concurrent Database Operations | 20 |
        | ... | sql=UPDATE budget SET amount = amount + 1 WHERE id = 1 |
        | ... | isolation=REPEATABLE READ | max_retries=20 |
        """
        if not self._pool:
            raise TransactionError("No connection pool is open: call Open Connection Pool first.")
        if operations < 1:
            raise ValueError(f"operations must be at least 1, got {operations}.")
        self._batches += 1
        batch = self._batches

        def write(conn: Any, index: int) -> None:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {PROBE_TABLE} (batch, op, backend_pid) "
                            "VALUES (%s, %s, pg_backend_pid())", (batch, index))
                if sql:
                    cur.execute(sql)

        report = run_concurrent_operations(self._pool, operations, write, label=f"{label} #{batch}",
                                           hold=hold.total_seconds(),
                                           arrival_timeout=max(10.0, self._pool.queue_timeout),
                                           isolation=isolation, max_retries=max_retries)
        report.rows_written = self._require_engine().query(
            f"SELECT count(*) FROM {PROBE_TABLE} WHERE batch = {batch}")[1][0][0]
        logger.info(report.to_html(), html=True)
        logger.info(report.summary())
        return report

    def pool_success_rate_should_be_at_least(self, report: PoolReport, percent: float) -> None:
        """Passes when at least ``percent`` % of the batch's operations succeeded and wrote their row.

        Example:
        | Pool Success Rate Should Be At Least | ${report} | 80 |
        """
        if report.success_rate < percent:
            raise TransactionError(f"Only {report.success_rate:.0f} % of operations succeeded, "
                                   f"expected at least {percent:g} %: {report.summary()}; first error: "
                                   f"{report.errors[0] if report.errors else 'none'}")
        if report.rows_written is not None and report.rows_written != report.succeeded:
            raise TransactionError(f"{report.succeeded} operations reported success but "
                                   f"{report.rows_written} rows were written: {report.summary()}")

    def pool_exhaustion_should_have_been_detected(self, report: PoolReport, waited: int | None = None,
                                                  refused: int | None = None) -> None:
        """Passes when some callers had to wait or were refused; optionally exact counts.

        Example:
        | Pool Exhaustion Should Have Been Detected | ${report} | waited=15 | refused=0 |
        """
        if not report.exhausted:
            raise TransactionError(f"Pool exhaustion was not detected: nobody waited or was refused. "
                                   f"{report.summary()}")
        counts = (("waited", waited, report.waited), ("refused", refused, report.refused))
        for what, expected, actual in counts:
            if expected is not None and actual != expected:
                raise TransactionError(f"Expected {expected} callers to have {what}, got {actual}: "
                                       f"{report.summary()}")

    def pool_should_have_recovered(self, report: PoolReport) -> None:
        """Passes when the batch fully succeeded, wrote every row and returned every connection.

        Example:
        | Pool Should Have Recovered | ${report} |
        """
        problems = []
        if report.succeeded != report.operations:
            problems.append(f"{report.failed} of {report.operations} operations failed "
                            f"(first: {report.errors[0] if report.errors else '?'})")
        if report.rows_written is not None and report.rows_written != report.operations:
            problems.append(f"{report.rows_written} of {report.operations} rows written")
        if report.in_use_after:
            problems.append(f"{report.in_use_after} connections still checked out")
        if report.backends_used > report.pool_size:
            problems.append(f"{report.backends_used} server connections used by a pool of {report.pool_size}")
        if problems:
            raise TransactionError(f"The pool did not recover: {'; '.join(problems)}. {report.summary()}")

    def concurrent_operations_should_have_been_retried(self, report: PoolReport,
                                                       sqlstate: str | None = None) -> None:
        """Passes when PostgreSQL refused some operations of the batch and they were retried.

        With ``sqlstate`` the refusals must include that SQLSTATE.

        Example:
        | Concurrent Operations Should Have Been Retried | ${report} | sqlstate=40001 |
        """
        if not report.retries or (sqlstate and sqlstate not in report.retries):
            wanted = f" after {describe_sqlstate(sqlstate)}" if sqlstate else ""
            raise TransactionError(f"No operation of {report.label} was retried{wanted} under "
                                   f"{report.isolation}: {report.summary()}")

    def close_connection_pool(self) -> None:
        """Closes the pool's connections.

        Example:
        | Close Connection Pool |
        """
        if self._pool:
            self._pool.close()
            self._pool = None

    # ------------------------------------------------------------ internals

    def _require_engine(self) -> TransactionEngine:
        if not self._engine:
            raise TransactionError("No scratch database in this suite: call Create Scratch Database first.")
        return self._engine

    @staticmethod
    def _variable(name: str) -> str | None:
        return context.current().get(name) or None

    @staticmethod
    def _check_step(result: StepResult, expect_sqlstate: str | None) -> StepResult:
        if expect_sqlstate:
            if result.sqlstate != expect_sqlstate:
                got = describe_sqlstate(result.sqlstate) if result.failed else f"success ({result.outcome()})"
                raise TransactionError(f"{result.transaction}: expected {result.label()} to fail with "
                                       f"{describe_sqlstate(expect_sqlstate)}, got {got}.")
        elif result.failed or result.status == "skipped":
            raise TransactionError(f"{result.transaction}: {result.label()} failed: {result.outcome()}.")
        return result

    @staticmethod
    def _log_step(result: StepResult) -> None:
        logger.info(f"{result.transaction}: <code>{_escape(result.sql)}</code> → {_escape(result.outcome())}",
                    html=True)

    @staticmethod
    def _log_result(result: InterleavingResult) -> None:
        logger.info(result.to_html(), html=True)
        logger.info(result.summary())

    def _log_journal(self, anomaly: str) -> None:
        if self._engine:
            partial = InterleavingResult(isolation={}, steps=list(self._engine.journal), anomaly=anomaly)
            logger.info(partial.to_html(), html=True)


def _levels(result: InterleavingResult) -> str:
    return "under " + " / ".join(sorted(set(result.isolation.values())) or ["?"])


def _escape(value: Any) -> str:
    return html.escape(str(value))
