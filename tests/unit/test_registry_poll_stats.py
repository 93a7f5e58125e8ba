"""The shared homes: connection registry (leak report), poll-until, percentile, error base."""

from __future__ import annotations

import pytest
from crosstalk import poll, registry, stats
from crosstalk.errors import CrosstalkError


class Resource:
    def __init__(self) -> None:
        self.open = True

    def close(self) -> None:
        self.open = False


def register(reg: registry.Registry, resource: Resource, label: str, user_id: str | None = None,
             kind: str = registry.WEBSOCKET) -> None:
    reg.register(resource, owner="Test", kind=kind, label=label, user_id=user_id,
                 is_open=lambda: resource.open, close=resource.close)


def test_open_user_ids_count_only_open_sockets():
    reg = registry.Registry()
    a, b, pool = Resource(), Resource(), Resource()
    register(reg, a, "alice#1", "u-a")
    register(reg, b, "bob#1", "u-b")
    register(reg, pool, "pool of 2", kind=registry.POOL)
    b.close()
    assert reg.open_user_ids() == {"u-a"}


def test_end_suite_closes_only_what_the_suite_opened_and_reports_it():
    reg = registry.Registry()
    outer = Resource()
    register(reg, outer, "parent#1", "u-p")
    reg.start_suite("s1-s1")
    inner, closed_by_teardown = Resource(), Resource()
    register(reg, inner, "alice#1", "u-a")
    register(reg, closed_by_teardown, "bob#1", "u-b")
    closed_by_teardown.close()
    report = reg.end_suite("s1-s1", "Chat")
    assert report == ("Suite 'Chat' left 1 resource(s) open after its teardown; Crosstalk closed them: "
                      "alice#1 (Test websocket)")
    assert not inner.open and outer.open
    assert reg.end_suite("s1-s1", "Chat") == ""  # a second listener of the same suite reports nothing


def test_a_close_that_fails_is_named_and_does_not_stop_the_others():
    reg = registry.Registry()
    good = Resource()

    def broken() -> None:
        raise OSError("socket gone")

    reg.register(object(), owner="Test", kind=registry.POOL, label="pool of 5", user_id=None,
                 is_open=lambda: True, close=broken)
    register(reg, good, "alice#1")
    report = reg.end_suite("s1", "Top")
    assert "left 2 resource(s)" in report and "closing failed for pool of 5: OSError: socket gone" in report
    assert not good.open


def test_poll_until_returns_the_last_observation_and_wait_until_words_the_timeout():
    values = iter([3, 2, 1, 0])
    assert poll.poll_until(lambda: next(values), lambda n: n == 0, 5.0, interval=0) == (0, True)
    assert poll.poll_until(lambda: 7, lambda n: n == 0, 0.0) == (7, False)
    with pytest.raises(CrosstalkError, match=r"^7 sessions left after 0 s$"):
        poll.wait_until(lambda: 7, lambda n: n == 0, 0.0, lambda n: f"{n} sessions left after 0 s")


def test_one_percentile_nearest_rank_like_hdr():
    assert stats.percentile([5, 1, 4, 2, 3], 50) == 3
    assert stats.percentile(list(range(1, 101)), 95) == 95
    assert stats.percentile([], 50, empty=0.0) == 0.0
    with pytest.raises(ValueError, match="No values"):
        stats.percentile([], 95)
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        stats.percentile([1], 950)


def test_every_library_error_is_a_crosstalk_error_shown_without_its_name():
    from crosstalk import conformance, connection, context, races, rest, sharedplatform, stores, transactions
    from crosstalk.contract import ContractError

    errors = [ContractError, races.RaceError, rest.RestError, transactions.TransactionError,
              transactions.PoolExhausted, stores.StoreError, connection.ConnectionRefused,
              conformance.RuleBroken, context.ConfigurationError, sharedplatform.PlatformError]
    for error in errors:
        assert issubclass(error, CrosstalkError) and error.ROBOT_SUPPRESS_NAME, error
    assert transactions.IsolationLevel is stores.IsolationLevel
