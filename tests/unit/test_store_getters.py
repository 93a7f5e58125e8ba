"""CrosstalkStores' getters over a fake Redis: counts per user, retry until timeout, failures naming users."""

from __future__ import annotations

import fnmatch
from datetime import timedelta

import pytest
from assertionengine import AssertionOperator
from crosstalk.model import TestUser
from CrosstalkStores import CrosstalkStores

EQ = AssertionOperator["=="]


class FakeRedis:
    """SCAN over a set of keys; each scan may first drop some keys (the server cleaning up)."""

    def __init__(self, keys: list[str], drop_per_scan: int = 0) -> None:
        self.keys = list(keys)
        self.drop_per_scan = drop_per_scan
        self.scans = 0

    def scan_iter(self, match: str = "*", count: int = 1000):
        self.scans += 1
        del self.keys[:self.drop_per_scan]
        return [k for k in self.keys if fnmatch.fnmatchcase(k, match)]


def _user(label: str) -> TestUser:
    user = TestUser(label=label, email=f"{label}@example.test", password="x", canary=f"CANARY-{label}")
    user.user_id = f"id-{label}"
    return user


def _stores(fake: FakeRedis) -> CrosstalkStores:
    stores = CrosstalkStores()
    stores.stores.redis["cache"] = fake
    return stores


def test_without_an_operator_the_count_is_returned():
    fake = FakeRedis(["session:id-alice:c1", "session:id-alice:c2", "session:id-bob:c1"])
    assert _stores(fake).get_session_count(_user("alice"), alias="cache") == 2


def test_the_count_is_polled_until_the_server_has_cleaned_up():
    fake = FakeRedis([f"session:id-frank:c{i}" for i in range(4)], drop_per_scan=1)
    stores = _stores(fake)
    assert stores.get_session_count(_user("frank"), EQ, "0", timeout=timedelta(seconds=5), alias="cache") == 0
    assert fake.scans == 4


def test_a_list_of_users_names_each_user_who_broke_it_with_their_last_count():
    fake = FakeRedis(["session:id-a:c1", "session:id-b:c1", "session:id-b:c2"])
    users = [_user("a"), _user("b"), _user("c")]
    with pytest.raises(AssertionError) as failure:
        _stores(fake).get_session_count(users, EQ, 1, alias="cache",
                                        message="a session record was lost or duplicated")
    assert str(failure.value) == (
        "2 of 3 users: Session records of b in Redis (session:id-b:*) is 2, expected == 1: a session record "
        "was lost or duplicated; Session records of c in Redis (session:id-c:*) is 0, expected == 1: a "
        "session record was lost or duplicated")


def test_a_list_of_users_returns_their_counts():
    fake = FakeRedis(["session:id-a:c1", "session:id-b:c1"])
    assert _stores(fake).get_session_count([_user("a"), _user("b")], EQ, 1, alias="cache") == [1, 1]
