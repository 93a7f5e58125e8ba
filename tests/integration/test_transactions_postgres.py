"""Transaction races against a real PostgreSQL (embedded, or ``DATABASE_URL`` when set).

Each assertion keyword is shown to pass on what PostgreSQL promises and to fail,
naming the anomaly, when the expectation is wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
from crosstalk.transactions import (
    IsolationLevel,
    QueuedPool,
    ScratchDatabase,
    TransactionEngine,
    TransactionError,
    run_concurrent_operations,
)
from CrosstalkTransactions import CrosstalkTransactions

REPO_ROOT = Path(__file__).resolve().parents[2]
RC, RR, SER = IsolationLevel.READ_COMMITTED, IsolationLevel.REPEATABLE_READ, IsolationLevel.SERIALIZABLE

LOST_UPDATE = [
    "T1: SELECT amount AS t1_amount FROM budget WHERE id = 1",
    "T2: SELECT amount AS t2_amount FROM budget WHERE id = 1",
    "T1: UPDATE budget SET amount = {{t1_amount}} + 1 WHERE id = 1",
    "T1: COMMIT",
    "T2: UPDATE budget SET amount = {{t2_amount}} + 1 WHERE id = 1",
    "T2: COMMIT",
]
WRITE_SKEW = [
    "T1: SELECT count(*) AS on_duty FROM on_call WHERE on_duty",
    "T2: SELECT count(*) AS on_duty FROM on_call WHERE on_duty",
    "T1: UPDATE on_call SET on_duty = false WHERE agent = 'alice'",
    "T2: UPDATE on_call SET on_duty = false WHERE agent = 'bob'",
    "T1: COMMIT",
    "T2: COMMIT",
]
ABORTED_READ = [
    "T1: UPDATE budget SET amount = 999 WHERE id = 1",
    "T2: SELECT amount AS seen_while_open FROM budget WHERE id = 1",
    "T1: ROLLBACK",
    "T2: SELECT amount AS seen_after_abort FROM budget WHERE id = 1",
    "T2: COMMIT",
]
DEADLOCK = [
    "T1: UPDATE budget SET amount = amount + 10 WHERE id = 1",
    "T2: UPDATE budget SET amount = amount + 100 WHERE id = 2",
    "T1 blocks: UPDATE budget SET amount = amount + 10 WHERE id = 2",
    "T2: UPDATE budget SET amount = amount + 100 WHERE id = 1",
    "T1: COMMIT",
    "T2: COMMIT",
]


@pytest.fixture(scope="module")
def server_url():
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    from reference_platform.embedded import EmbeddedPostgres, remove_data_dir

    # Not under pytest's basetemp: every new pytest session resets /tmp/pytest-of-<user>
    # to mode 0700, which cuts the non-root postgres user off its running data directory.
    data_dir = Path(tempfile.mkdtemp(prefix="crosstalk-txpg-"))
    pg = EmbeddedPostgres(data_dir).start()
    try:
        yield pg.url
    finally:
        pg.stop()
        remove_data_dir(data_dir)


@pytest.fixture(scope="module")
def scratch(server_url):
    db = ScratchDatabase.create(server_url, "crosstalk_txtest")
    yield db
    db.drop()


@pytest.fixture
def engine(scratch):
    eng = TransactionEngine(scratch.dsn)
    eng.query("DROP TABLE IF EXISTS budget; DROP TABLE IF EXISTS on_call")
    eng.query("CREATE TABLE budget (id int PRIMARY KEY, amount int NOT NULL)")
    eng.query("INSERT INTO budget VALUES (1, 10), (2, 10)")
    eng.query("CREATE TABLE on_call (agent text PRIMARY KEY, on_duty boolean NOT NULL)")
    eng.query("INSERT INTO on_call VALUES ('alice', true), ('bob', true)")
    yield eng
    eng.close_all()


@pytest.fixture
def lib(server_url):
    library = CrosstalkTransactions()
    library.create_scratch_database(server_url, prefix="crosstalk_libtest")
    library.execute_scratch_sql("CREATE TABLE budget (id int PRIMARY KEY, amount int NOT NULL)")
    library.execute_scratch_sql("INSERT INTO budget VALUES (1, 10), (2, 10)")
    library.execute_scratch_sql("CREATE TABLE on_call (agent text PRIMARY KEY, on_duty boolean NOT NULL)")
    library.execute_scratch_sql("INSERT INTO on_call VALUES ('alice', true), ('bob', true)")
    yield library
    library.drop_scratch_database()


def lost_update(engine, level, **kwargs):
    return engine.run(LOST_UPDATE, isolation=level, anomaly="lost update (P4)",
                      invariant="SELECT amount = 12 FROM budget WHERE id = 1",
                      state="SELECT amount FROM budget WHERE id = 1", **kwargs)


def write_skew(engine, level):
    return engine.run(WRITE_SKEW, isolation=level, anomaly="write skew (G2-item)",
                      invariant="SELECT count(*) >= 1 FROM on_call WHERE on_duty")


# ------------------------------------------------------------ what PostgreSQL promises


def test_lost_update_happens_under_read_committed(engine):
    result = lost_update(engine, RC)
    assert result.anomaly_occurred
    assert result.losers == {}
    assert engine.query("SELECT amount FROM budget WHERE id = 1")[1] == [(11,)]


@pytest.mark.parametrize("level", [RR, SER])
def test_lost_update_refused_with_40001_above_read_committed(engine, level):
    result = lost_update(engine, level)
    assert not result.anomaly_occurred
    assert result.losers == {"T2": "40001"}
    assert result.committed("T1") and not result.committed("T2")


def test_retried_loser_makes_both_updates_count(engine):
    result = lost_update(engine, RR, retry_losers=True)
    assert result.invariant_held
    assert [(r.transaction, r.sqlstate, r.succeeded) for r in result.retries] == [("T2", "40001", True)]


def test_write_skew_happens_under_repeatable_read(engine):
    result = write_skew(engine, RR)
    assert result.anomaly_occurred
    assert result.committed("T1") and result.committed("T2")


def test_write_skew_refused_on_second_commit_under_serializable(engine):
    result = write_skew(engine, SER)
    assert not result.anomaly_occurred and result.invariant_held
    refused = [r for r in result.steps if r.failed]
    assert [(r.transaction, r.sql, r.sqlstate) for r in refused] == [("T2", "COMMIT", "40001")]


READ_SKEW = [
    "T1: SELECT amount AS audited_1 FROM budget WHERE id = 1",
    "T2: UPDATE budget SET amount = amount - 5 WHERE id = 1",
    "T2: UPDATE budget SET amount = amount + 5 WHERE id = 2",
    "T2: COMMIT",
    "T1: SELECT amount AS audited_2 FROM budget WHERE id = 2",
    "T1: COMMIT",
]


@pytest.mark.parametrize(("level", "occurs"), [(RC, True), (RR, False), (SER, False)])
def test_read_skew_only_under_read_committed(engine, level, occurs):
    result = engine.run(READ_SKEW, isolation=level, anomaly="read skew (G-single)",
                        invariant="SELECT {{audited_1}} + {{audited_2}} = 20")
    assert result.anomaly_occurred is occurs
    assert result.losers == {}
    assert result.reads("T1") == ([10, 15] if occurs else [10, 10])


@pytest.mark.parametrize("level", list(IsolationLevel))
def test_aborted_write_is_never_read(engine, level):
    result = engine.run(ABORTED_READ, isolation=level, anomaly="dirty read (G1a)",
                        invariant="SELECT {{seen_while_open}} = 10 AND {{seen_after_abort}} = 10")
    assert result.reads("T2") == [10, 10]
    assert not result.anomaly_occurred


def test_deadlock_detected_and_retried_loser_applied_exactly_once(engine):
    engine.query("UPDATE budget SET amount = 100")
    result = engine.run(DEADLOCK, retry_losers=True, invariant="SELECT bool_and(amount = 210) FROM budget")
    assert list(result.losers.values()) == ["40P01"]
    assert len(result.retries) == 1 and result.retries[0].succeeded
    assert result.invariant_held
    blocked = next(r for r in result.steps if r.blocks)
    assert blocked.blocked_by == ["T2"]


def test_blocking_step_is_proven_from_pg_stat_activity(engine):
    engine.open("T1")
    engine.open("T2")
    engine.execute("T1", "UPDATE budget SET amount = amount + 1 WHERE id = 1")
    engine.start("T2", "UPDATE budget SET amount = amount + 1 WHERE id = 1")
    assert engine.await_blocked("T2", 5, held_by="T1").blocked_by == ["T1"]
    engine.commit("T1")
    assert engine.join("T2", 5).command == "UPDATE 1"
    engine.commit("T2")
    assert engine.query("SELECT amount FROM budget WHERE id = 1")[1] == [(12,)]


# ------------------------------------------------------------ the checks can fail


def test_step_marked_blocks_that_does_not_block_fails(engine):
    with pytest.raises(TransactionError, match=r"expected to wait for a lock .* finished after"):
        engine.run(["T1: UPDATE budget SET amount = 1 WHERE id = 1",
                    "T2 blocks: UPDATE budget SET amount = 2 WHERE id = 2"], timeout=2)
    assert engine.sessions["T1"].transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_waiting_for_the_wrong_holder_fails(engine):
    engine.open("T1")
    engine.open("T2")
    engine.execute("T1", "UPDATE budget SET amount = 0 WHERE id = 1")
    engine.start("T2", "UPDATE budget SET amount = 1 WHERE id = 1")
    with pytest.raises(TransactionError, match="held by T1, not by T3"):
        engine.await_blocked("T2", 5, held_by="T3")
    engine.rollback("T1")
    engine.join("T2", 5)


def test_background_step_never_released_is_cancelled_with_its_holder_named(engine):
    engine.open("T1")
    engine.open("T2")
    engine.execute("T1", "UPDATE budget SET amount = 0 WHERE id = 1")
    engine.start("T2", "UPDATE budget SET amount = 1 WHERE id = 1")
    engine.await_blocked("T2", 5)
    started = time.monotonic()
    with pytest.raises(TransactionError, match=r"still running after 0.5 s, waiting for Lock:\w+ held by T1"):
        engine.join("T2", 0.5)
    assert time.monotonic() - started < 5


def test_unmarked_step_that_blocks_fails_with_lock_timeout(engine):
    engine.open("T1", lock_timeout=0.3)
    engine.open("T2", lock_timeout=0.3)
    result = engine.run(["T1: UPDATE budget SET amount = 0 WHERE id = 1",
                         "T2: UPDATE budget SET amount = 1 WHERE id = 1",
                         "T2: COMMIT", "T1: COMMIT"])
    failed = result.errors[0]
    assert (failed.transaction, failed.sqlstate) == ("T2", "55P03")
    assert result.losers == {}  # a timeout is not PostgreSQL resolving a race


def test_unknown_placeholder_is_reported_with_a_hint(engine):
    with pytest.raises(TransactionError, match=r"uses \{\{nope\}\} .* 'AS nope'"):
        engine.run(["T1: SELECT 1 AS one", "T1: SELECT {{nope}}"])


def test_prevented_assertion_fails_naming_the_anomaly_under_read_committed(lib):
    result = lib.run_interleaving(*LOST_UPDATE, isolation=RC, anomaly="lost update (P4)",
                                  invariant="SELECT amount = 12 FROM budget WHERE id = 1",
                                  state="SELECT amount FROM budget WHERE id = 1")
    with pytest.raises(AssertionError, match=r"lost update \(P4\) happened under READ COMMITTED.*amount=11"):
        lib.anomaly_should_have_been_prevented(result)
    with pytest.raises(AssertionError, match="expected T2 to be refused"):
        lib.transaction_should_have_lost(result, "T2")
    lib.anomaly_should_have_occurred(result)


def test_occurred_assertion_fails_when_postgres_refused(lib):
    result = lib.run_interleaving(*LOST_UPDATE, isolation=RR, anomaly="lost update (P4)",
                                  invariant="SELECT amount = 12 FROM budget WHERE id = 1")
    with pytest.raises(AssertionError, match=r"Expected lost update \(P4\) to happen under REPEATABLE READ, "
                                             r"but it was prevented: T2 was refused with 40001"):
        lib.anomaly_should_have_occurred(result)
    with pytest.raises(AssertionError, match="not by SQLSTATE 40P01"):
        lib.anomaly_should_have_been_prevented(result, sqlstate="40P01")
    with pytest.raises(AssertionError, match="expected T1 to be refused"):
        lib.anomaly_should_have_been_prevented(result, loser="T1")
    with pytest.raises(AssertionError, match="T2 was refused with 40001 serialization_failure, "
                                             "expected 40P01"):
        lib.transaction_should_have_lost(result, "T2", sqlstate="40P01")
    with pytest.raises(AssertionError, match="expected T2 to commit"):
        lib.transaction_should_have_committed(result, "T2")
    with pytest.raises(AssertionError, match="no transaction was refused and retried"):
        lib.losers_should_have_been_retried(result)
    lib.anomaly_should_have_been_prevented(result, sqlstate="40001", loser="T2")


def test_write_skew_prevented_assertion_fails_under_repeatable_read(lib):
    result = lib.run_interleaving(*WRITE_SKEW, isolation=RR, anomaly="write skew (G2-item)",
                                  invariant="SELECT count(*) >= 1 FROM on_call WHERE on_duty")
    with pytest.raises(AssertionError, match=r"write skew \(G2-item\) happened under REPEATABLE READ"):
        lib.anomaly_should_have_been_prevented(result)
    with pytest.raises(AssertionError, match=r"write skew \(G2-item\): invariant .* is false"):
        lib.invariant_should_hold(result)


def test_dirty_read_occurred_assertion_fails(lib):
    result = lib.run_interleaving(*ABORTED_READ, isolation=RC, anomaly="dirty read (G1a)",
                                  invariant="SELECT {{seen_while_open}} = 10 AND {{seen_after_abort}} = 10")
    with pytest.raises(AssertionError, match=r"Expected dirty read \(G1a\) to happen"):
        lib.anomaly_should_have_occurred(result)
    with pytest.raises(AssertionError, match=r"dirty read \(G1a\): T2 read \[10, 10\] .* expected only 999"):
        lib.transaction_should_only_have_read(result, "T2", 999)
    lib.transaction_should_only_have_read(result, "T2", 10)


def test_execute_in_transaction_expectations_can_fail(lib):
    lib.open_transactions("T1", "T2", isolation=RR)
    lib.execute_in_transaction("T1", "SELECT amount FROM budget WHERE id = 1")
    with pytest.raises(AssertionError, match=r"expected step .* to fail with 40001 serialization_failure, "
                                             r"got success"):
        lib.execute_in_transaction("T1", "SELECT 1", expect_sqlstate="40001")
    lib.execute_in_transaction("T2", "UPDATE budget SET amount = 0 WHERE id = 1")
    lib.commit_transaction("T2")
    lib.execute_in_transaction("T1", "UPDATE budget SET amount = 5 WHERE id = 1", expect_sqlstate="40001")
    with pytest.raises(AssertionError, match="failed: skipped"):
        lib.execute_in_transaction("T1", "SELECT 1")
    lib.rollback_transaction("T1")
    result = lib.get_interleaving(anomaly="manual lost update")
    assert result.losers == {"T1": "40001"}
    lib.close_all_transactions()
    lib.open_transactions("T3")
    lib.execute_in_transaction("T3", "SELECT 1")
    assert lib.get_interleaving().transactions == ["T3"]  # the previous scenario is not mixed in


# ------------------------------------------------------------ scratch databases


def test_scratch_names_are_unique_and_drop_terminates_leftover_sessions(server_url):
    first = ScratchDatabase.create(server_url)
    second = ScratchDatabase.create(server_url)
    assert first.name != second.name
    leftover = psycopg2.connect(first.dsn)
    leftover.autocommit = False
    leftover.cursor().execute("SELECT 1")  # an open transaction would block a plain DROP
    first.drop()
    second.drop()
    with psycopg2.connect(server_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname IN (%s, %s)", (first.name, second.name))
        assert cur.fetchone()[0] == 0
    conn.close()
    leftover.close()


def test_user_without_createdb_gets_a_scratch_schema_instead(server_url):
    tag = uuid.uuid4().hex[:8]
    role, home = f"crosstalk_nocreatedb_{tag}", f"crosstalk_home_{tag}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN NOCREATEDB NOSUPERUSER")
        cur.execute(f"CREATE DATABASE {home} OWNER {role}")
    user_url = psycopg2.extensions.make_dsn(server_url, user=role, dbname=home)
    try:
        scratch = ScratchDatabase.create(user_url)
        assert scratch.schema_only
        engine = TransactionEngine(scratch.dsn)
        engine.query("CREATE TABLE budget (id int PRIMARY KEY, amount int NOT NULL)")
        engine.query("INSERT INTO budget VALUES (1, 10)")
        result = lost_update(engine, RR)
        assert result.losers == {"T2": "40001"}
        # deadlock_timeout is superuser-only: the session falls back to the server default
        assert engine.sessions["T1"].deadlock_timeout_ms is None
        engine.close_all()
        scratch.drop()
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (scratch.name,))
            assert cur.fetchone()[0] == 0
        with psycopg2.connect(user_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (scratch.name,))
            assert cur.fetchone()[0] == 0
        conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {home} WITH (FORCE)")
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


def test_missing_or_unreachable_server_gives_one_line_errors(monkeypatch):
    monkeypatch.delenv("BACKEND_DATABASE_URL", raising=False)
    with pytest.raises(AssertionError, match=r"^BACKEND_DATABASE_URL is not set: run with --variable"):
        CrosstalkTransactions().create_scratch_database()
    with pytest.raises(AssertionError, match=r"Cannot connect to PostgreSQL .* postgresql://u:\*\*\*@127.0.0.1:9/x"):
        CrosstalkTransactions().create_scratch_database("postgresql://u:hunter2@127.0.0.1:9/x",
                                                        connect_timeout=timedelta(seconds=1))


# ------------------------------------------------------------ connection pool


def _write(conn, index):
    with conn.cursor() as cur:
        cur.execute("SELECT %s", (index,))


def test_queued_pool_serves_every_caller_and_counts_exact_waits(scratch):
    pool = QueuedPool(scratch.dsn, 5, queueing=True, queue_timeout=10)
    try:
        report = run_concurrent_operations(pool, 20, _write, hold=0.05)
        assert (report.succeeded, report.waited, report.refused, report.max_waiting) == (20, 15, 0, 15)
        assert report.backends_used == 5 and report.in_use_after == 0
        again = run_concurrent_operations(pool, 20, _write, hold=0.0)
        assert again.succeeded == 20
    finally:
        pool.close()


def test_pool_without_queue_refuses_beyond_its_size_then_recovers(scratch):
    pool = QueuedPool(scratch.dsn, 5, queueing=False)
    try:
        report = run_concurrent_operations(pool, 20, _write, hold=0.05)
        assert (report.succeeded, report.refused) == (5, 15)
        assert "exhausted" in report.errors[0]
        assert run_concurrent_operations(pool, 5, _write, hold=0.0).succeeded == 5
    finally:
        pool.close()


def test_queue_timeout_refuses_and_names_the_wait(scratch):
    pool = QueuedPool(scratch.dsn, 1, queueing=True, queue_timeout=0.2)
    try:
        holding = threading.Event()
        release = threading.Event()

        def hold():
            with pool.connection():
                holding.set()
                release.wait(5)

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(5)
        with pytest.raises(TransactionError, match=r"Waited 0.2 s for one of 1 pooled connections"), \
                pool.connection():
            pass
        release.set()
        holder.join(5)
        assert pool.stats.refused == 1 and pool.in_use == 0
    finally:
        pool.close()


def test_concurrent_writers_refused_under_repeatable_read_are_retried_exactly_once_each(lib):
    lib.open_connection_pool(size=5)
    report = lib.run_concurrent_database_operations(
        20, sql="UPDATE budget SET amount = amount + 1 WHERE id = 1", isolation=RR, max_retries=50)
    assert report.succeeded == 20 and report.rows_written == 20
    assert report.retries.get("40001", 0) >= 4  # the first wave alone: 5 snapshots, 1 winner
    lib.concurrent_operations_should_have_been_retried(report, sqlstate="40001")
    assert lib.execute_scratch_sql("SELECT amount FROM budget WHERE id = 1") == 30
    calm = lib.run_concurrent_database_operations(3, sql="SELECT 1")
    assert calm.isolation == "server default"
    with pytest.raises(AssertionError, match=r"No operation of .* was retried after 40001"):
        lib.concurrent_operations_should_have_been_retried(calm, sqlstate="40001")


def test_queued_callers_are_served_first_come_first_served(scratch):
    pool = QueuedPool(scratch.dsn, 1, queueing=True, queue_timeout=10)
    served: list[str] = []
    release = threading.Event()

    def borrower(name: str, hold: bool) -> None:
        with pool.connection():
            served.append(name)
            if hold:
                release.wait(5)

    try:
        holder = threading.Thread(target=borrower, args=("holder", True))
        holder.start()
        waiters = []
        for position, name in enumerate(["first", "second", "third"], start=1):
            waiter = threading.Thread(target=borrower, args=(name, False))
            waiter.start()
            waiters.append(waiter)
            deadline = time.monotonic() + 5
            while pool.waiting < position:  # queue them in a known order
                assert time.monotonic() < deadline, f"{name} never queued"
                time.sleep(0.005)
        release.set()
        for thread in [holder, *waiters]:
            thread.join(5)
        assert served == ["holder", "first", "second", "third"]
        assert pool.stats.waited == 3 and pool.in_use == 0
    finally:
        release.set()
        pool.close()


def test_stale_scratch_databases_are_dropped_and_fresh_ones_kept(server_url):
    from crosstalk.transactions import drop_stale_scratch_databases

    stale_name = f"crosstalk_stale_{int(time.time()) - 8 * 3600}_1_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {stale_name}")
    fresh = ScratchDatabase.create(server_url, "crosstalk_stale")
    try:
        dropped = drop_stale_scratch_databases(server_url, "crosstalk_stale", older_than=6 * 3600)
        assert dropped == [stale_name]
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'crosstalk\\_stale\\_%'")
            assert [row[0] for row in cur.fetchall()] == [fresh.name]
    finally:
        fresh.drop()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {stale_name}")
        admin.close()


def test_pool_assertions_can_fail(lib):
    lib.open_connection_pool(size=5, queueing=False)
    refused = lib.run_concurrent_database_operations(operations=20)
    assert refused.rows_written == 5
    with pytest.raises(AssertionError, match="Only 25 % of operations succeeded, expected at least 80 %"):
        lib.pool_success_rate_should_be_at_least(refused, 80)
    with pytest.raises(AssertionError, match="The pool did not recover: 15 of 20 operations failed"):
        lib.pool_should_have_recovered(refused)
    small = lib.run_concurrent_database_operations(operations=3)
    with pytest.raises(AssertionError, match="Pool exhaustion was not detected"):
        lib.pool_exhaustion_should_have_been_detected(small)
    lib.pool_should_have_recovered(small)


# ------------------------------------------------------------ the Robot suite end to end


def test_robot_suite_passes_against_a_real_server(server_url, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "robot", "--outputdir", str(tmp_path), "--console", "dotted",
         "--variable", f"BACKEND_DATABASE_URL:{server_url}", "suites/transaction_anomalies.robot"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    assert "13 tests, 13 passed, 0 failed" in completed.stdout
