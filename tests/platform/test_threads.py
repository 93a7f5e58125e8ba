"""Thread ownership over REST: owners see their threads, everyone else gets one identical 404."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.platform.chatclient import TIMEOUT, chat, register_and_login


@pytest.fixture(scope="module")
def owner_and_thread(platform):
    owner = register_and_login(platform, "rest-owner")
    thread_id = chat(platform, owner, f"owner canary {uuid.uuid4().hex}")[0]["thread_id"]
    return owner, thread_id


def get(platform, user, path: str) -> requests.Response:
    return requests.get(f"{platform.backend_url}{path}", headers=user.headers, timeout=TIMEOUT)


def test_owner_reads_thread_and_messages(platform, owner_and_thread):
    owner, thread_id = owner_and_thread
    thread = get(platform, owner, f"/threads/{thread_id}")
    assert thread.status_code == 200 and thread.json()["thread_id"] == thread_id
    messages = get(platform, owner, f"/threads/{thread_id}/messages")
    assert messages.status_code == 200 and [m["role"] for m in messages.json()] == ["user", "agent"]


@pytest.mark.parametrize("suffix", ["", "/messages"])
def test_not_yours_and_does_not_exist_give_one_identical_404(platform, owner_and_thread, suffix):
    _, thread_id = owner_and_thread
    intruder = register_and_login(platform, "rest-intruder")
    not_yours = get(platform, intruder, f"/threads/{thread_id}{suffix}")
    missing = get(platform, intruder, f"/threads/{uuid.uuid4()}{suffix}")
    garbage = get(platform, intruder, f"/threads/not-a-uuid{suffix}")
    assert not_yours.status_code == missing.status_code == garbage.status_code == 404
    assert not_yours.content == missing.content == garbage.content
    assert b"canary" not in not_yours.content


def test_list_shows_only_own_threads_newest_first(platform, owner_and_thread):
    owner, thread_id = owner_and_thread
    other = register_and_login(platform, "rest-lister")
    assert get(platform, other, "/threads").json() == []
    newer = chat(platform, owner, "a newer thread")[0]["thread_id"]
    listed = [t["thread_id"] for t in get(platform, owner, "/threads").json()]
    assert listed[:2] == [newer, thread_id]


def test_delete_is_owner_only(platform):
    owner, intruder = register_and_login(platform, "del-owner"), register_and_login(platform, "del-intruder")
    thread_id = chat(platform, owner, "delete me later")[0]["thread_id"]
    url = f"{platform.backend_url}/threads/{thread_id}"
    refused = requests.delete(url, headers=intruder.headers, timeout=TIMEOUT)
    assert refused.status_code == 404
    assert get(platform, owner, f"/threads/{thread_id}").status_code == 200
    assert requests.delete(url, headers=owner.headers, timeout=TIMEOUT).status_code == 204
    assert get(platform, owner, f"/threads/{thread_id}").status_code == 404
    assert requests.delete(url, headers=owner.headers, timeout=TIMEOUT).status_code == 404


def test_health_and_metrics(platform):
    health = requests.get(f"{platform.backend_url}/health", timeout=TIMEOUT)
    assert health.status_code == 200
    assert {k: health.json()[k] for k in ("status", "postgres", "redis")} == {
        "status": "ok", "postgres": "ok", "redis": "ok"}
    metrics = requests.get(f"{platform.backend_url}/metrics", timeout=TIMEOUT).json()
    assert metrics["pid"] == platform.pids["backend"]
    assert {"active_websockets", "tracked_connections", "runs_in_flight", "rss_bytes"} <= set(metrics)


def test_only_one_authorization_header_authenticates(platform):
    from crosstalk.integrity import raw_request

    user = register_and_login(platform, "single-header")
    good = ("Authorization", f"Bearer {user.access_token}")
    bad = ("Authorization", "Bearer x" + user.access_token[1:])
    assert raw_request(platform.backend_url, "/threads", [good]).status == 200
    assert raw_request(platform.backend_url, "/ws", [good], upgrade=True).status == 101
    for headers in ([good, bad], [bad, good], [good, good]):
        assert raw_request(platform.backend_url, "/threads", headers).status == 401
        assert raw_request(platform.backend_url, "/ws", headers, upgrade=True).status == 401
    query = f"/ws?access_token={user.access_token}"
    assert raw_request(platform.backend_url, query, [], upgrade=True).status == 401
