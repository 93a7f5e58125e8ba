"""Assertion operators for getters, in the style of Browser's AssertionEngine.

Every Crosstalk getter (``Get Session Count``, ``Get Row Count``, ``Get Load Metric`` …)
returns what it measured.  Given an operator and an expected value it also asserts,
with the operators of ``robotframework-assertion-engine`` (``==  !=  <  >  <=  >=  *=
validate  then`` …), retrying until ``timeout`` the way Browser's getters do::

    Get Session Count    ${alice}    ==    0    timeout=5s
    Get Load Metric      ${run}      p95   <    250ms

What is compared is typed by its :class:`Kind`: a duration compares with a
duration (``250ms``, ``2s``, ``1 min``), a size with a size (``512MB``, ``4GB``),
a percentage with a percentage (``80%``), a count with a number.  Values are held
in base units (seconds, bytes, percent).  A failure names what was measured (user,
run, store), the last value seen and how long it was awaited::

    Session records of alice in Redis is 2, expected == 0 (last value seen, polled for 5 s)

Nothing here touches a platform: getters pass an ``observe`` callable, so the
parsing, the unit conversion and the retry are tested with fakes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any, Generic, TypeVar

from assertionengine import AssertionOperator, verify_assertion
from robot.utils import timestr_to_secs

from .errors import CrosstalkError
from .poll import INTERVAL_S, poll_until

T = TypeVar("T")

__all__ = ["AssertionOperator", "Kind", "Outcome", "assert_that", "check", "convert_expected", "show"]

NUMERIC = {AssertionOperator[op] for op in ("==", "!=", "<", ">", "<=", ">=")}
EVALUATING = {AssertionOperator["validate"], AssertionOperator["then"]}
_SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*(.*?)\s*$", re.IGNORECASE)


class Kind(Enum):
    """What a measured value is, so the expected value is read in the same unit."""

    NUMBER = "number"      # counts, ratios, throughput: a plain number
    DURATION = "duration"  # seconds; expected as ``250ms``, ``2s``, ``1 min`` or a timedelta
    BYTES = "bytes"        # bytes; expected as ``512MB``, ``4GB``, ``1GiB``
    PERCENT = "percent"    # percent; expected as ``80%`` (or ``80``)


class BadExpectation(CrosstalkError):
    """An expected value that cannot be read as the measured kind: one line saying how to write it."""


def convert_expected(expected: Any, kind: Kind | str, what: str = "the value") -> float | int:
    """The expected value of a numeric comparison in the measured kind's base unit.

    Example: ``convert_expected("250ms", Kind.DURATION) == 0.25``; ``convert_expected("4GB", "bytes") == 4e9``
    """
    kind = Kind(kind)
    if not isinstance(expected, str):
        return _convert_object(expected, kind, what)
    text = expected.strip()
    match = _NUMBER.match(text)
    if not match:
        raise BadExpectation(f"{what}: cannot read '{text}' as a {kind.value}; write e.g. {_example(kind)}.")
    number_text, unit = match.group(1), match.group(2)
    return _READERS[kind](text, float(number_text), unit, what)


def _convert_object(expected: Any, kind: Kind, what: str) -> float | int:
    if isinstance(expected, timedelta):
        if kind is not Kind.DURATION:
            raise BadExpectation(f"{what} is a {kind.value}, not a duration: compare it with a "
                                 f"{_example(kind)}, not {expected}.")
        return expected.total_seconds()
    if isinstance(expected, bool) or not isinstance(expected, (int, float)):
        raise BadExpectation(f"{what}: expected value {expected!r} is not a {kind.value}; "
                             f"write e.g. {_example(kind)}.")
    if kind in (Kind.DURATION, Kind.BYTES):
        raise BadExpectation(f"{what} is a {kind.value}: give the unit, e.g. {_example(kind)} "
                             f"(got {expected}).")
    return expected


def _duration(text: str, number: float, unit: str, what: str) -> float:
    if not unit:
        raise BadExpectation(f"{what} is a duration: give the unit, e.g. 250ms or 2s (got '{text}').")
    try:
        return float(timestr_to_secs(text, round_to=None))
    except ValueError:
        raise BadExpectation(f"{what} is a duration: '{text}' is not one; write e.g. 250ms, 2s or "
                             "1 min.") from None


def _size(text: str, number: float, unit: str, what: str) -> float:
    if unit.lower() not in _SIZE_UNITS:
        raise BadExpectation(f"{what} is a size: give the unit, e.g. 512MB or 4GB (got '{text}').")
    return number * _SIZE_UNITS[unit.lower()]


def _percent(text: str, number: float, unit: str, what: str) -> float:
    if unit not in ("", "%"):
        raise BadExpectation(f"{what} is a percentage: write e.g. 80% (got '{text}').")
    return number


def _plain(text: str, number: float, unit: str, what: str) -> float | int:
    if unit not in ("", "/s"):
        raise BadExpectation(f"{what} is a plain number: drop the unit '{unit}' (got '{text}').")
    return int(number) if re.fullmatch(r"[-+]?\d+", _NUMBER.match(text).group(1)) else number


_READERS: dict[Kind, Callable[[str, float, str, str], float | int]] = {
    Kind.DURATION: _duration, Kind.BYTES: _size, Kind.PERCENT: _percent, Kind.NUMBER: _plain,
}


def _example(kind: Kind) -> str:
    return {Kind.DURATION: "250ms or 2s", Kind.BYTES: "512MB or 4GB", Kind.PERCENT: "80%",
            Kind.NUMBER: "0 or 0.7"}[kind]


def show(value: Any, kind: Kind | str = Kind.NUMBER) -> str:
    """A measured value for a message: ``1.2 s``, ``3.1 GiB``, ``99.5%``, ``135.7``.

    Example: ``show(0.25, Kind.DURATION) == "250.0 ms"``
    """
    from .metrics import format_bytes, format_seconds  # metrics imports hdrh: only when shown

    kind = Kind(kind)
    if value is None:
        return "not measured"
    if isinstance(value, (list, tuple, dict, str)):
        return repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if kind is Kind.DURATION:
        return format_seconds(value)
    if kind is Kind.BYTES:
        return format_bytes(value)
    if kind is Kind.PERCENT:
        return f"{value:.1f}%"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


@dataclass
class Outcome(Generic[T]):
    """What a check saw: the last value, whether it held, and the failure line when it did not."""

    value: T | None
    passed: bool
    expression: str = ""
    shown: str = ""
    failure: str = ""
    result: Any = None  # what the getter returns: the value, or what ``then``/``matches`` produced


def _seconds(timeout: timedelta | float | None) -> float:
    if timeout is None:
        return 0.0
    return timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)


def check(observe: Callable[[], T], operator: AssertionOperator | None, expected: Any, *,
          what: str, kind: Kind | str = Kind.NUMBER, timeout: timedelta | float | None = None,
          message: str | None = None, subject: str = "", note: str = "",
          interval: float = INTERVAL_S) -> Outcome[T]:
    """Observe until the assertion holds or ``timeout`` passed (at least once); never raises on a miss.

    ``what`` names the measurement with its owner (``"session records of alice"``);
    ``subject`` is the short name used in the expression (``p95`` in ``p95 < 250ms``);
    ``note`` explains what was measured, after the verdict (`` — time to first event …``).
    Without an operator the first observation is returned as it is.
    A wrong expected value (``2`` for a duration) raises :class:`BadExpectation` at once.

    Example: ``check(lambda: count(), AssertionOperator["=="], 0, what="sessions of alice", timeout=5)``
    """
    kind = Kind(kind)
    if operator is None:
        if expected not in (None, ""):
            raise BadExpectation(f"{what}: an expected value ({expected}) needs an operator such as == or <.")
        value = observe()
        return Outcome(value, True, shown=show(value, kind), result=value)
    limit = convert_expected(expected, kind, what) if operator in NUMERIC else expected
    expression = f"{subject or what} {operator.value} {_expected_text(expected)}"
    seconds = _seconds(timeout)
    tries = 0

    def attempt() -> tuple[Any, str, Any]:
        nonlocal tries
        tries += 1
        value = observe()
        if operator in NUMERIC and (value is None or (isinstance(value, float) and math.isnan(value))):
            return value, "is not measured", None
        try:
            result = verify_assertion(value, operator, limit, custom_message=message and _safe(message))
        except AssertionError as exc:
            return value, str(exc), None
        return value, "", result

    if operator is AssertionOperator["then"]:
        seconds = 0.0  # an evaluation, not an assertion: nothing to wait for
    (value, error, result), _ = poll_until(attempt, lambda seen: not seen[1], seconds, interval)
    shown = show(value, kind)
    if not error:
        return Outcome(value, True, expression, shown, result=result)
    wanted = f"expected {operator.value} {_expected_text(expected)}"
    detail = f"is not measured, {wanted}" if error == "is not measured" else f"is {shown}, {wanted}"
    if message:  # the caller's words (``{value}``/``{expected}`` filled in) say why it matters
        detail += f": {error if error != 'is not measured' else message}"
    waited = (f" (last value seen, polled {tries} times for {round(seconds, 3):g} s)" if seconds > 0 else "")
    about = f" — {note}" if note else ""
    return Outcome(value, False, expression, shown, f"{_capital(what)} {detail}{waited}{about}")


def assert_that(observe: Callable[[], T], operator: AssertionOperator | None, expected: Any, *,
                what: str, kind: Kind | str = Kind.NUMBER, timeout: timedelta | float | None = None,
                message: str | None = None, subject: str = "", note: str = "",
                interval: float = INTERVAL_S) -> Any:
    """:func:`check`, raising :class:`CrosstalkError` with the failure line; returns what the getter returns.

    Example: ``assert_that(lambda: len(rows()), AssertionOperator["=="], 0, what="rows of alice", timeout=2)``
    """
    outcome = check(observe, operator, expected, what=what, kind=kind, timeout=timeout, message=message,
                    subject=subject, note=note, interval=interval)
    if not outcome.passed:
        raise CrosstalkError(outcome.failure)
    return outcome.result


def _expected_text(expected: Any) -> str:
    if isinstance(expected, timedelta):
        return f"{expected.total_seconds():g}s"
    return str(expected)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _safe(message: str) -> str:
    """A custom message may use ``{value}`` and ``{expected}``; any other brace is literal text."""
    escaped = message.replace("{", "{{").replace("}", "}}")
    for name in ("value", "value_type", "expected", "expected_type"):
        escaped = escaped.replace("{{" + name + "}}", "{" + name + "}")
    return escaped


def report_met(text: str) -> None:
    """Add one met threshold to the running test's message, ``; ``-separated (report.html shows it).

    Outside a running test it does nothing.

    Example: ``report_met("p95 212.0 ms (threshold: p95 < 250ms)")``
    """
    try:
        from robot.libraries.BuiltIn import BuiltIn
        from robot.running.context import EXECUTION_CONTEXTS
    except ImportError:  # pragma: no cover - robot is a dependency
        return
    current = EXECUTION_CONTEXTS.current
    test = getattr(current, "test", None) if current is not None else None
    if test is None:
        return
    BuiltIn().set_test_message(f"{test.message}; {text}" if test.message else text)
