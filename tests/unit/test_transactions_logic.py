"""Pure logic of the transaction race engine: step parsing, judging, reports, masking."""

from __future__ import annotations

import pytest
from crosstalk.transactions import (
    InterleavingResult,
    PoolReport,
    Retry,
    Step,
    StepResult,
    TransactionError,
    classify_sqlstate,
    describe_sqlstate,
    mask_dsn,
    sqlstate_name,
    with_database,
)


def _step(row: int, name: str, sql: str, status: str = "ok", *, sqlstate: str | None = None,
          command: str = "", attempt: int = 1, columns=(), rows=()) -> StepResult:
    return StepResult(row=row, step=row, transaction=name, sql=sql, segment=1, attempt=attempt, status=status,
                      command=command or sql.split()[0].upper(), sqlstate=sqlstate,
                      error="could not serialize access" if sqlstate else None,
                      columns=list(columns), rows=list(rows), started_ms=row, ended_ms=row + 0.5)


def _lost_update(rc_loses: bool) -> InterleavingResult:
    steps = [_step(1, "T1", "UPDATE acct SET v = 11", command="UPDATE 1"),
             _step(2, "T1", "COMMIT"),
             _step(3, "T2", "UPDATE acct SET v = 11", "error" if rc_loses else "ok",
                   sqlstate="40001" if rc_loses else None, command="UPDATE 1"),
             _step(4, "T2", "COMMIT", "rolled back" if rc_loses else "ok",
                   command="ROLLBACK" if rc_loses else "COMMIT")]
    return InterleavingResult(isolation={"T1": "REPEATABLE READ", "T2": "REPEATABLE READ"}, steps=steps,
                              anomaly="lost update (P4)", invariant="SELECT v = 12 FROM acct",
                              invariant_held=False)


@pytest.mark.parametrize(("text", "expected"), [
    ("T1: SELECT v FROM acct WHERE id = 1", Step("T1", "SELECT v FROM acct WHERE id = 1")),
    ("  T2 blocks:  UPDATE acct SET v = 0 ", Step("T2", "UPDATE acct SET v = 0", blocks=True)),
    ("agent_a: COMMIT", Step("agent_a", "COMMIT")),
    ("T1: SELECT 'a: b'", Step("T1", "SELECT 'a: b'")),
])
def test_step_parse(text, expected):
    assert Step.parse(text) == expected


@pytest.mark.parametrize("text", ["SELECT 1", "T1 SELECT 1", "T1:", "1T: SELECT 1", "T1 waits: SELECT 1"])
def test_step_parse_rejects_with_a_hint(text):
    with pytest.raises(ValueError, match="is not 'NAME: SQL' or 'NAME blocks: SQL'"):
        Step.parse(text)


def test_sqlstate_names_and_classes():
    assert sqlstate_name("40001") == "serialization_failure"
    assert sqlstate_name("40P01") == "deadlock_detected"
    assert describe_sqlstate("55P03") == "55P03 lock_not_available"
    assert classify_sqlstate("40P01").startswith("retryable")
    assert classify_sqlstate("55P03").startswith("lock timeout")
    assert classify_sqlstate("23505") == "constraint violation"
    assert classify_sqlstate(None) == "ok"
    assert sqlstate_name("ZZ999") == "ZZ999"


def test_mask_dsn_hides_passwords_in_urls_and_keyword_dsns():
    assert mask_dsn("postgresql://app:s3cret@db:5432/backend") == "postgresql://app:***@db:5432/backend"
    assert "s3cret" not in mask_dsn("host=db password=s3cret dbname=x")
    assert "s3 cret" not in mask_dsn("host=db password='s3 cret' dbname=x")
    assert mask_dsn("postgresql://app@db/backend") == "postgresql://app@db/backend"


def test_with_database_keeps_server_and_credentials():
    dsn = with_database("postgresql://app:pw@127.0.0.1:6543/backend", "scratch_1")
    assert "dbname=scratch_1" in dsn and "port=6543" in dsn and "password=pw" in dsn
    assert "backend" not in dsn


def test_lost_update_judged_as_occurred_when_nobody_was_refused():
    result = _lost_update(rc_loses=False)
    assert result.losers == {}
    assert result.anomaly_occurred
    assert result.committed("T1") and result.committed("T2")


def test_refusal_with_40001_means_prevented_and_names_the_loser():
    result = _lost_update(rc_loses=True)
    assert result.losers == {"T2": "40001"}
    assert not result.anomaly_occurred
    assert not result.committed("T2")
    assert "T2 refused with 40001 serialization_failure" in result.summary()


def test_anomaly_cannot_be_judged_without_invariant():
    result = _lost_update(rc_loses=False)
    result.invariant_held = None
    with pytest.raises(TransactionError, match="no invariant"):
        _ = result.anomaly_occurred


def test_retry_attempts_do_not_count_as_first_attempt_losers():
    result = _lost_update(rc_loses=True)
    result.steps.append(_step(5, "T2", "UPDATE acct SET v = 12", attempt=2, status="error", sqlstate="40001"))
    assert result.losers == {"T2": "40001"}
    result.retries.append(Retry("T2", 1, "40001", 1, True))
    assert "T2 retried 1x (committed)" in result.summary()


def test_reads_are_first_values_of_successful_selects():
    result = InterleavingResult(isolation={"T2": "READ COMMITTED"}, steps=[
        _step(1, "T2", "SELECT v FROM acct", columns=["v"], rows=[(10,)]),
        _step(2, "T1", "SELECT v FROM acct", columns=["v"], rows=[(999,)]),
        _step(3, "T2", "SELECT v FROM acct", "error", sqlstate="40001"),
        _step(4, "T2", "SELECT v FROM acct", columns=["v"], rows=[(10,)]),
    ])
    assert result.reads("T2") == [10, 10]


def test_html_table_escapes_sql_and_marks_errors():
    result = _lost_update(rc_loses=True)
    result.steps[0].sql = "SELECT '<script>'"
    page = result.to_html()
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "40001 serialization_failure" in page
    assert "#fdd" in page  # the refused step is highlighted


def test_pool_report_rate_and_exhaustion():
    report = PoolReport(label="b", pool_size=5, queueing=False, operations=20, succeeded=5, failed=15,
                        waited=0, refused=15, max_waiting=0, backends_used=5, in_use_after=0, elapsed_ms=10,
                        wait_p50_ms=0, wait_max_ms=0)
    assert report.success_rate == 25.0
    assert report.exhausted
    assert "15 refused" in report.summary()
    assert "<table" in report.to_html()
