"""POST /workspaces: three databases, two-phase commit, injected failures and the no_rollback bug."""

from __future__ import annotations

import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
import requests

from tests.platform.chatclient import TIMEOUT, register_and_login


def _db(platform, name: str) -> str:
    url = platform.state["backend_database_url"]
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


def _value(url: str, sql: str, *params):
    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def stores(platform, user) -> tuple[int, int, int]:
    """(auth count, backend rows, analytics events) for one user."""
    return (
        _value(
            platform.state["auth_database_url"],
            "SELECT coalesce(max(workspace_count), 0) FROM user_workspace_counts WHERE user_id = %s",
            user.user_id,
        ),
        _value(
            platform.state["backend_database_url"],
            "SELECT count(*) FROM workspaces WHERE user_id = %s",
            user.user_id,
        ),
        _value(_db(platform, "analytics"), "SELECT count(*) FROM events WHERE user_id = %s", user.user_id),
    )


def create(platform, user, name="ws"):
    return requests.post(
        f"{platform.backend_url}/workspaces", json={"name": name}, headers=user.headers, timeout=TIMEOUT
    )


def test_workspace_is_written_to_all_three_stores_and_no_prepared_transaction_remains(platform):
    user = register_and_login(platform, "ws")
    reply = create(platform, user, "planning")
    assert reply.status_code == 201, reply.text
    assert stores(platform, user) == (1, 1, 1)
    listed = requests.get(f"{platform.backend_url}/workspaces", headers=user.headers, timeout=TIMEOUT).json()
    assert [w["workspace_id"] for w in listed] == [reply.json()["workspace_id"]]
    assert (
        _value(
            platform.state["auth_database_url"],
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE %s",
            f"ws:{reply.json()['workspace_id']}:%",
        )
        == 0
    )


def test_workspace_refuses_bad_names_and_missing_tokens(platform):
    user = register_and_login(platform, "ws")
    assert create(platform, user, "").status_code == 422
    assert create(platform, user, "x" * 101).status_code == 422
    anonymous = requests.post(f"{platform.backend_url}/workspaces", json={"name": "n"}, timeout=TIMEOUT)
    assert anonymous.status_code == 401
    assert stores(platform, user) == (0, 0, 0)


@pytest.mark.parametrize(
    "injection,step", [("workspace_backend_fail", "backend"), ("workspace_analytics_fail", "analytics")]
)
def test_injected_failure_rolls_every_store_back(platform_factory, injection, step):
    broken = platform_factory(faults=[injection])
    user = register_and_login(broken, "ws")
    reply = create(broken, user)
    assert reply.status_code == 503, reply.text
    assert reply.json()["failed_step"] == step
    assert stores(broken, user) == (0, 0, 0)
    assert _value(broken.state["auth_database_url"], "SELECT count(*) FROM pg_prepared_xacts") == 0


def test_no_rollback_leaves_the_earlier_steps_applied(platform_factory):
    broken = platform_factory(faults=["no_rollback", "workspace_analytics_fail"])
    user = register_and_login(broken, "ws")
    assert create(broken, user).status_code == 503
    assert stores(broken, user) == (1, 1, 0)


def test_many_concurrent_workspaces_of_one_user_all_commit(platform):
    # More same-user transactions than the step pool has connections: they queue on the user's row
    # lock, and the coordinator must still commit the one holding it.
    user = register_and_login(platform, "ws")
    with ThreadPoolExecutor(15) as pool:
        statuses = list(pool.map(lambda i: create(platform, user, f"w{i}").status_code, range(15)))
    assert statuses == [201] * 15
    assert stores(platform, user) == (15, 15, 15)
