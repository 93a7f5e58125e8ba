"""crosstalk.assertions: operators, unit conversion, retry until timeout and failure wording (fakes only)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from assertionengine import AssertionOperator
from crosstalk.assertions import BadExpectation, Kind, assert_that, check, convert_expected, show
from crosstalk.errors import CrosstalkError

EQ, LT, GE = AssertionOperator["=="], AssertionOperator["<"], AssertionOperator[">="]


@pytest.mark.parametrize(
    ("expected", "kind", "base"),
    [
        ("250ms", Kind.DURATION, 0.25),
        ("2s", Kind.DURATION, 2.0),
        ("1 min", Kind.DURATION, 60.0),
        ("100us", Kind.DURATION, 0.0001),  # no rounding to milliseconds
        (timedelta(milliseconds=1500), Kind.DURATION, 1.5),
        ("4GB", Kind.BYTES, 4e9),
        ("512 MiB", Kind.BYTES, 512 * 1024**2),
        ("80%", Kind.PERCENT, 80.0),
        ("99.5", Kind.PERCENT, 99.5),
        ("0", Kind.NUMBER, 0),
        ("0.7", Kind.NUMBER, 0.7),
        ("2/s", Kind.NUMBER, 2),
        (3, Kind.NUMBER, 3),
    ],
)
def test_expected_values_are_read_in_the_measured_kind(expected, kind, base):
    assert convert_expected(expected, kind) == pytest.approx(base)


def test_an_integer_count_stays_an_integer():
    assert isinstance(convert_expected("2", Kind.NUMBER), int)


@pytest.mark.parametrize(
    ("expected", "kind", "message"),
    [
        ("250", Kind.DURATION, "p95 is a duration: give the unit, e.g. 250ms or 2s (got '250')"),
        (250, Kind.DURATION, "p95 is a duration: give the unit"),
        ("soon", Kind.DURATION, "cannot read 'soon' as a duration"),
        ("4", Kind.BYTES, "p95 is a size: give the unit, e.g. 512MB or 4GB"),
        ("4 parsecs", Kind.BYTES, "is a size"),
        ("80 ms", Kind.PERCENT, "is a percentage: write e.g. 80%"),
        ("2s", Kind.NUMBER, "is a plain number: drop the unit 's'"),
        (timedelta(seconds=1), Kind.BYTES, "is a bytes, not a duration"),
        (None, Kind.NUMBER, "is not a number"),
    ],
)
def test_a_wrong_expected_value_is_one_line_saying_what_to_write(expected, kind, message):
    with pytest.raises(BadExpectation, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_expected(expected, kind, "p95")


def test_durations_compare_as_durations():
    assert check(lambda: 0.2, LT, "250ms", what="p95", kind=Kind.DURATION).passed
    assert not check(lambda: 0.3, LT, "250ms", what="p95", kind=Kind.DURATION).passed
    assert check(lambda: 1.9, LT, timedelta(seconds=2), what="p95", kind="duration").passed


def test_without_an_operator_the_value_is_returned():
    assert assert_that(lambda: 7, None, None, what="sessions") == 7


def test_an_expected_value_without_an_operator_is_refused():
    with pytest.raises(BadExpectation, match="needs an operator"):
        assert_that(lambda: 7, None, "7", what="sessions")


def test_retry_until_the_assertion_holds():
    seen = iter([3, 2, 1, 0, 0])
    assert assert_that(lambda: next(seen), EQ, "0", what="sessions of alice", timeout=2, interval=0.001) == 0


def test_a_miss_names_what_the_last_value_and_how_long_it_was_awaited():
    seen = iter([3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    started = time.monotonic()
    with pytest.raises(CrosstalkError) as failure:
        assert_that(lambda: next(seen, 2), EQ, 0, what="session records of alice in Redis",
                    timeout=timedelta(milliseconds=50), interval=0.01)
    assert time.monotonic() - started < 1.0
    message = str(failure.value)
    assert message.startswith(
        "Session records of alice in Redis is 2, expected == 0 (last value seen, polled ")
    assert message.endswith("for 0.05 s)")


def test_no_timeout_means_one_look():
    calls = []
    outcome = check(lambda: calls.append(1) or 5, EQ, 0, what="rows")
    assert not outcome.passed and len(calls) == 1
    assert outcome.failure == "Rows is 5, expected == 0"


def test_a_custom_message_says_why_after_the_measurement():
    outcome = check(lambda: 2, EQ, 0, what="session records of frank",
                    message="sessions are not removed when their socket closes ({value} left, {oops})")
    assert outcome.failure == ("Session records of frank is 2, expected == 0: sessions are not removed when "
                               "their socket closes (2 left, {oops})")


def test_an_unmeasured_value_fails_a_numeric_comparison():
    outcome = check(lambda: None, LT, "4GB", what="platform memory", kind=Kind.BYTES)
    assert not outcome.passed and outcome.failure == "Platform memory is not measured, expected < 4GB"


def test_other_operators_of_the_assertion_engine_work_on_text():
    assert check(lambda: "session:u1:c1", AssertionOperator["*="], "u1", what="key").passed
    assert not check(lambda: "session:u1:c1", AssertionOperator["^="], "ctx", what="key").passed


def test_an_error_other_than_a_miss_is_not_retried():
    calls = []

    def observe():
        calls.append(1)
        raise ConnectionError("redis went away")

    with pytest.raises(ConnectionError):
        check(observe, EQ, 0, what="sessions", timeout=1)
    assert len(calls) == 1


def test_the_outcome_carries_the_expression_and_the_shown_value():
    outcome = check(lambda: 0.2125, GE, "1s", what="startup", subject="p95", kind=Kind.DURATION)
    assert outcome.expression == "p95 >= 1s" and outcome.shown == "212.5 ms" and not outcome.passed


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [(0.25, Kind.DURATION, "250.0 ms"), (3 * 1024**3, Kind.BYTES, "3.0 GiB"), (99.5, Kind.PERCENT, "99.5%"),
     (135.66, Kind.NUMBER, "135.7"), (3, Kind.NUMBER, "3"), (None, Kind.NUMBER, "not measured")],
)
def test_values_are_shown_in_their_unit(value, kind, text):
    assert show(value, kind) == text
