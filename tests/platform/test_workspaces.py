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


def create_injected(platform, user, injection, name="ws"):
    return requests.post(
        f"{platform.backend_url}/workspaces",
        json={"name": name},
        headers={**user.headers, "X-Crosstalk-Inject": injection},
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize(
    "injection,step", [("workspace_backend_fail", "backend"), ("workspace_analytics_fail", "analytics")]
)
def test_injected_failure_rolls_every_store_back(platform, injection, step):
    user = register_and_login(platform, "ws")
    reply = create_injected(platform, user, injection)
    assert reply.status_code == 503, reply.text
    assert reply.json()["failed_step"] == step
    assert stores(platform, user) == (0, 0, 0)
    assert _value(platform.state["auth_database_url"], "SELECT count(*) FROM pg_prepared_xacts") == 0


@pytest.mark.parametrize("injection", ["workspace_backend_fail", "workspace_analytics_fail"])
def test_injection_switch_breaks_every_request(platform_factory, injection):
    broken = platform_factory(faults=[injection])
    user = register_and_login(broken, "ws")
    assert create(broken, user).status_code == 503
    assert stores(broken, user) == (0, 0, 0)


def test_unknown_injection_is_refused_and_nothing_is_written(platform):
    user = register_and_login(platform, "ws")
    reply = create_injected(platform, user, "workspace_everything_fail")
    assert reply.status_code == 400
    assert reply.json()["error"] == "unknown_injection"
    assert "workspace_backend_fail" in reply.json()["message"]
    assert stores(platform, user) == (0, 0, 0)


def test_health_advertises_the_injections_when_test_hooks_are_on(platform):
    health = requests.get(f"{platform.backend_url}/health", timeout=TIMEOUT).json()
    assert health["capabilities"]["fault_injection"] == ["workspace_analytics_fail", "workspace_backend_fail"]
    assert platform.state["test_hooks"] is True


def test_without_test_hooks_the_header_is_ignored_and_nothing_is_advertised(platform_factory):
    plain = platform_factory(extra_args=["--no-test-hooks"])
    health = requests.get(f"{plain.backend_url}/health", timeout=TIMEOUT).json()
    assert health["capabilities"]["fault_injection"] == []
    user = register_and_login(plain, "ws")
    assert create_injected(plain, user, "workspace_backend_fail").status_code == 201
    assert create_injected(plain, user, "no_such_injection").status_code == 201
    assert stores(plain, user) == (2, 2, 2)


def test_no_rollback_leaves_the_earlier_steps_applied(platform_factory):
    broken = platform_factory(faults=["no_rollback"])
    user = register_and_login(broken, "ws")
    assert create_injected(broken, user, "workspace_analytics_fail").status_code == 503
    assert stores(broken, user) == (1, 1, 0)


def test_many_concurrent_workspaces_of_one_user_all_commit(platform):
    # More same-user transactions than the step pool has connections: they queue on the user's row
    # lock, and the coordinator must still commit the one holding it.
    user = register_and_login(platform, "ws")
    with ThreadPoolExecutor(15) as pool:
        statuses = list(pool.map(lambda i: create(platform, user, f"w{i}").status_code, range(15)))
    assert statuses == [201] * 15
    assert stores(platform, user) == (15, 15, 15)
