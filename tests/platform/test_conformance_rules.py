"""The conformance rules can fail: on a platform with planted bugs exactly the rules those bugs break
are reported broken (and those whose evidence needs a chat), with evidence; on the correct platform
every rule is met."""

from __future__ import annotations

import re

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
    faulty = platform_factory(
        faults=["bola_rest", "logout_no_revoke", "refresh_reuse", "ws_origin_unchecked"])
    broken = _broken(faulty)
    assert set(broken) == {"API-5", "AUTH-4", "AUTH-7", "WS-1"}, broken
    assert "answered HTTP 200, expected 404" in broken["API-5"]
    assert "was accepted, expected HTTP 403" in broken["WS-1"]
    assert "answered HTTP 200, expected 401" in broken["AUTH-7"]
    # tokens in an unexpected answer are masked (6 characters kept, as everywhere in Crosstalk's logs)
    assert re.search(r"eyJ[\w-]{8,}\.[\w-]+\.", "".join(broken.values())) is None


def test_a_frame_off_the_schema_breaks_the_stream_rules(platform_factory):
    drifting = platform_factory(faults=["event_timestamp_drift"])
    results = run_rules(_target(drifting), "websocket")
    broken = {r.rule.rule_id: r.evidence for r in results if not r.ok}
    assert set(broken) == {"WS-2", "WS-3"}, broken  # WS-3 sends a chat after the errors
    assert "violates the contract at $.timestamp" in broken["WS-2"]
    assert "does not satisfy type 'string'" in broken["WS-2"]
