"""The conformance rules can fail: on a platform with planted bugs exactly the rules those bugs break
are reported broken (and those whose evidence needs a chat), with evidence; on the correct platform
every rule is met."""

from __future__ import annotations

from crosstalk.conformance import RULES, Target, run_rules
from crosstalk.contract import FrameContract


def _target(platform) -> Target:
    state = platform.state
    return Target(state["auth_url"], state["backend_url"], state["ws_url"], prefix="ct-test-",
                  frames=FrameContract.load())


def _broken(platform) -> dict[str, str]:
    target = _target(platform)
    return {r.rule.rule_id: r.evidence for area in RULES for r in run_rules(target, area) if not r.ok}


def test_the_reference_platform_meets_every_rule(platform):
    assert _broken(platform) == {}


def test_planted_bugs_break_exactly_their_rules(platform_factory):
    faulty = platform_factory(faults=["bola_rest", "logout_no_revoke", "refresh_reuse", "ws_origin_unchecked",
                                      "event_timestamp_drift"])
    broken = _broken(faulty)
    # the drifting timestamp breaks every rule whose evidence starts with a chat (API-4, -6, -8, WS-2, -3)
    expected = {"API-4", "API-5", "API-6", "API-8", "AUTH-4", "AUTH-7", "WS-1", "WS-2", "WS-3"}
    assert set(broken) == expected, broken
    assert "answered HTTP 200, expected 404" in broken["API-5"]
    assert "was accepted, expected HTTP 403" in broken["WS-1"]
    assert "$.timestamp" in broken["WS-2"] and "violates the contract" in broken["WS-2"]
    assert "answered HTTP 200, expected 401" in broken["AUTH-7"]
