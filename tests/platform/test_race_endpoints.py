"""Race-prone platform paths: the message counter, the thread-list cache, the delayed Redis pool."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from reference_platform import faults
from reference_platform.cache import LatencyProxy, RawRedisPool
from tests.platform.chatclient import TIMEOUT, chat, register_and_login


def _thread(platform, user) -> str:
    frames = chat(platform, user, f"hello from {user.email}")
    return frames[-1]["thread_id"]


def _post_notes(platform, user, thread_id: str, count: int) -> list[int]:
    def post(i: int) -> int:
        return requests.post(
            f"{platform.backend_url}/threads/{thread_id}/messages",
            json={"content": f"n{i}"},
            headers=user.headers,
            timeout=TIMEOUT,
        ).status_code

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(post, range(count)))


def _count(platform, user, thread_id: str) -> int:
    return requests.get(
        f"{platform.backend_url}/threads/{thread_id}", headers=user.headers, timeout=TIMEOUT
    ).json()["message_count"]


def test_parallel_notes_are_all_counted(platform):
    user = register_and_login(platform, "notes")
    thread_id = _thread(platform, user)
    assert _post_notes(platform, user, thread_id, 30) == [201] * 30
    assert _count(platform, user, thread_id) == 32


def test_notes_need_the_owner_and_content(platform):
    owner, other = register_and_login(platform, "owner"), register_and_login(platform, "other")
    thread_id = _thread(platform, owner)
    url = f"{platform.backend_url}/threads/{thread_id}/messages"
    assert (
        requests.post(url, json={"content": "x"}, headers=other.headers, timeout=TIMEOUT).status_code == 404
    )
    assert requests.post(url, json={}, headers=owner.headers, timeout=TIMEOUT).status_code == 422
    assert requests.post(url, json={"content": "x"}, timeout=TIMEOUT).status_code == 401


def test_lost_update_fault_loses_increments(platform_factory):
    broken = platform_factory(faults=["lost_update"])
    user = register_and_login(broken, "notes")
    thread_id = _thread(broken, user)
    assert _post_notes(broken, user, thread_id, 30) == [201] * 30
    assert _count(broken, user, thread_id) < 32


def test_thread_list_cache_is_invalidated_by_a_new_thread(platform):
    user = register_and_login(platform, "cache")
    listing = f"{platform.backend_url}/threads"
    assert requests.get(listing, headers=user.headers, timeout=TIMEOUT).json() == []
    thread_id = _thread(platform, user)
    assert [t["thread_id"] for t in requests.get(listing, headers=user.headers, timeout=TIMEOUT).json()] == [
        thread_id
    ]


def test_client_hanging_up_mid_request_does_not_break_the_next_read(platform):
    user = register_and_login(platform, "hangup")
    thread_id = _thread(platform, user)
    parts = urllib.parse.urlsplit(platform.backend_url)
    for _ in range(5):
        with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
            request = f"GET /threads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.access_token}\r\n\r\n"
            sock.sendall(request.encode())
            time.sleep(0.01)
    listed = requests.get(f"{platform.backend_url}/threads", headers=user.headers, timeout=TIMEOUT).json()
    assert [t["thread_id"] for t in listed] == [thread_id]


async def _cancelled_then_next(redis_url: str) -> tuple[object, int]:
    parts = urllib.parse.urlsplit(redis_url)
    proxy = await LatencyProxy(parts.hostname, parts.port, 50).start()
    pool = RawRedisPool("127.0.0.1", proxy.port, 0, size=1)
    try:
        await pool.execute("SET", "h7-test:a", "alice's titles")
        await pool.execute("SET", "h7-test:b", "bob's titles")
        first = asyncio.ensure_future(pool.execute("GET", "h7-test:a"))
        await asyncio.sleep(0.01)  # the command is on the wire, its reply 40 ms away
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await asyncio.wait_for(pool.execute("GET", "h7-test:b"), 5), pool.discarded
    finally:
        pool.close()
        await proxy.close()


@pytest.mark.parametrize("leak", [False, True])
def test_cancelled_read_leaves_the_pool_one_reply_behind_only_with_the_fault(platform, leak):
    faults.enable(["redis_cancel_leak"] if leak else [])
    try:
        reply, discarded = asyncio.run(_cancelled_then_next(platform.redis_url))
    finally:
        faults.enable([])
    if leak:
        assert reply == b"alice's titles" and discarded == 0
    else:
        assert reply == b"bob's titles" and discarded == 1
