"""CrosstalkLoad's run made once per suite: first use makes it, later tests reuse it or its failure."""

from __future__ import annotations

import pytest
from crosstalk.load import LoadConfig, LoadRun
from crosstalk.metrics import LoadMetrics
from CrosstalkLoad import CrosstalkLoad


class FakeLoad(CrosstalkLoad):
    """The keyword layer with the platform replaced: `_drive` counts its calls, the suite and test are set."""

    def __init__(self, fail: str = "") -> None:
        super().__init__()
        self.drives: list[LoadConfig] = []
        self.fail = fail
        self.suite = ("s1-s1", "Suites.Concurrent Agent Startup")
        self.test = "Every User Gets Their Own Agent"

    def _drive(self, config, timeout, users=None, previous=None):
        self.drives.append(config)
        if self.fail:
            raise AssertionError(self.fail)
        return LoadRun(config, LoadMetrics(config.name))

    def _suite_key(self):
        return self.suite

    def _test_name(self):
        return self.test


def test_the_first_test_makes_the_run_and_the_others_reuse_it():
    load = FakeLoad()
    first = load.run_chat_load(20, name="agent startup", once_per_suite=True)
    load.test = "Agents Start Fast Under Concurrent Load"
    again = load.run_chat_load(20, name="agent startup", once_per_suite=True)
    assert again is first and len(load.drives) == 1


def test_without_once_per_suite_every_call_makes_a_run():
    load = FakeLoad()
    load.run_chat_load(2)
    load.run_chat_load(2)
    assert len(load.drives) == 2


def test_another_suite_makes_its_own_run():
    load = FakeLoad()
    first = load.run_chat_load(20, name="agent startup", once_per_suite=True)
    load.suite = ("s1-s2", "Suites.Other")
    assert load.run_chat_load(20, name="agent startup", once_per_suite=True) is not first
    assert len(load.drives) == 2


def test_closing_every_load_user_forgets_the_shared_runs(monkeypatch):
    load = FakeLoad()
    monkeypatch.setattr("CrosstalkLoad.get_engine", lambda: type("E", (), {"run": lambda *a: None})())
    load.run_chat_load(20, name="agent startup", once_per_suite=True)
    load.close_load_users()
    load.run_chat_load(20, name="agent startup", once_per_suite=True)
    assert len(load.drives) == 2


def test_a_run_that_failed_fails_each_later_test_with_the_reason_and_is_not_retried():
    load = FakeLoad(fail="Load run 'agent startup' did not finish within 130 s: 3/20 connected")
    with pytest.raises(AssertionError, match="did not finish within 130 s"):
        load.run_chat_load(20, name="agent startup", once_per_suite=True)
    load.test = "Agents Start Fast Under Concurrent Load"
    with pytest.raises(AssertionError) as later:
        load.run_chat_load(20, name="agent startup", once_per_suite=True)
    assert str(later.value) == (
        "The load run 'agent startup' of this suite could not be made (tried by test 'Every User Gets Their "
        "Own Agent'): Load run 'agent startup' did not finish within 130 s: 3/20 connected")
    assert len(load.drives) == 1


def test_asking_for_the_shared_run_with_other_arguments_says_which_differ():
    load = FakeLoad()
    load.run_chat_load(20, name="agent startup", once_per_suite=True)
    with pytest.raises(ValueError, match=r"already made by test .* with users=20 \(now 5\); give the same"):
        load.run_chat_load(5, name="agent startup", once_per_suite=True)
