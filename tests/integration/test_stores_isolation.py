"""Check Isolation gathers real evidence: REST views, backend rows and Redis values of a platform.

A clean platform passes; one started with ``bola_ws`` (another user's thread_id accepted in a
WebSocket frame) fails on the database rule, naming both users.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from crosstalk.model import TestUser, Tokens
from CrosstalkIsolation import CrosstalkIsolation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from tests.platform.chatclient import User, chat, register_and_login


def as_test_user(label: str, account) -> TestUser:
    user = TestUser(label, account.email, "unused-password", f"CANARY-{label}-{account.user_id[:12]}",
                    account.user_id, Tokens(account.access_token, account.refresh_token))
    user.issued_access_tokens.append(account.access_token)
    return user


def owner_and_intruder(platform) -> tuple[TestUser, TestUser]:
    bob = as_test_user("bob", register_and_login(platform, "bob"))
    alice = as_test_user("alice", register_and_login(platform, "alice"))
    bob_events = chat(platform, User(
        bob.email, bob.user_id, bob.access_token, ""), f"my notes {bob.canary}")
    bob.thread_ids.add(bob_events[-1]["thread_id"])
    bob.run_ids.add(bob_events[-1]["run_id"])
    return bob, alice


def check(platform, *users: TestUser) -> None:
    CrosstalkIsolation().check_isolation(
        *users, backend_url=platform.backend_url, database_url=platform.state["backend_database_url"],
        redis_url=platform.redis_url,
    )


def test_clean_platform_passes_every_rule(platform):
    bob, alice = owner_and_intruder(platform)
    alice_account = User(alice.email, alice.user_id, alice.access_token, "")
    events = chat(platform, alice_account, f"hello {alice.canary}")
    alice.thread_ids.add(events[-1]["thread_id"])
    check(platform, alice, bob)


def test_message_into_foreign_thread_is_caught_in_the_database(platform_factory):
    platform = platform_factory(faults=["bola_ws"])
    bob, alice = owner_and_intruder(platform)
    bob_thread = next(iter(bob.thread_ids))
    alice_account = User(alice.email, alice.user_id, alice.access_token, "")
    events = chat(platform, alice_account, f"writing here {alice.canary}", thread_id=bob_thread)
    assert events[-1]["type"] == "agent_completed", "the bola_ws fault should accept the message"
    with pytest.raises(AssertionError) as info:
        check(platform, alice, bob)
    message = str(info.value)
    assert message.startswith("Isolation violated ")
    assert f"a messages row of alice was written into bob's thread {bob_thread[:8]}… (backend DB)" in message
    assert "canary of alice found in bob's REST GET /threads/" in message
