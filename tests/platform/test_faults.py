"""Each fault switch really plants its bug: the rule it breaks is visibly broken.

The detection matrix (tests/detection) proves the Robot suites catch these; here we
prove the platform side, so a switch that silently does nothing is caught early.
Compatible switches share one platform to keep this fast.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import redis
import requests

from tests.conftest import generate_private_key_pem, launch_platform, wait_until_up
from tests.platform.chatclient import (
    TIMEOUT,
    collect_run,
    collect_runs,
    forge_token,
    handshake_status,
    open_socket,
    receive,
    register_and_login,
    send_message,
)

GROUP_A = ["bola_rest", "bola_ws", "logout_no_revoke", "logout_keeps_refresh", "refresh_reuse",
           "jwt_alg_none", "jwt_hs256_confusion", "jwt_accept_expired", "ws_origin_unchecked", "session_leak",
           "connection_leak", "no_rate_limit", "no_frame_limit"]


GROUPS = [tuple(sorted(GROUP_A)), ("crosstalk",), ("shared_context", "sql_concat"),
          ("drop_event", "reorder_events")]


@pytest.fixture(scope="module")
def faulty_factory(tmp_path_factory):
    # All groups start at once: their startups overlap instead of adding up.
    started = {
        group: launch_platform(group, private_key_pem=generate_private_key_pem(),
                               work_dir=tmp_path_factory.mktemp("faulty"))
        for group in GROUPS
    }
    ready = set()

    def get(*names: str):
        key = tuple(sorted(names))
        if key not in ready:
            wait_until_up(started[key])
            ready.add(key)
        return started[key]

    yield get
    for running in started.values():
        running.stop()


@pytest.fixture
def group_a(faulty_factory):
    return faulty_factory(*GROUP_A)


def test_bola_rest_serves_another_users_thread(group_a):
    owner, intruder = register_and_login(group_a, "o"), register_and_login(group_a, "i")
    canary = f"canary {uuid.uuid4().hex}"
    with open_socket(group_a, owner.access_token) as ws:
        thread_id = collect_run(ws, send_message(ws, canary))[0]["thread_id"]
    reply = requests.get(f"{group_a.backend_url}/threads/{thread_id}/messages", headers=intruder.headers,
                         timeout=TIMEOUT)
    assert reply.status_code == 200 and canary in reply.text


def test_bola_ws_accepts_another_users_thread(group_a):
    owner, intruder = register_and_login(group_a, "o"), register_and_login(group_a, "i")
    with open_socket(group_a, owner.access_token) as ws:
        thread_id = collect_run(ws, send_message(ws, "private"))[0]["thread_id"]
    with open_socket(group_a, intruder.access_token) as ws:
        frames = collect_run(ws, send_message(ws, "intruding", thread_id=thread_id))
    assert frames[0]["type"] == "agent_started" and frames[0]["thread_id"] == thread_id


def test_logout_no_revoke_keeps_the_token_valid(group_a):
    user = register_and_login(group_a, "lo")
    logout = requests.post(f"{group_a.auth_url}/auth/logout", headers=user.headers, timeout=TIMEOUT)
    assert logout.status_code == 204
    after = requests.get(f"{group_a.backend_url}/threads", headers=user.headers, timeout=TIMEOUT)
    assert after.status_code == 200


def test_logout_keeps_refresh_lets_the_session_mint_new_tokens(group_a):
    user = register_and_login(group_a, "lk")
    logout = requests.post(f"{group_a.auth_url}/auth/logout", headers=user.headers, timeout=TIMEOUT)
    assert logout.status_code == 204
    after = requests.post(f"{group_a.auth_url}/auth/refresh", json={"refresh_token": user.refresh_token},
                          timeout=TIMEOUT)
    assert after.status_code == 200


def test_refresh_reuse_accepts_a_used_refresh_token(group_a):
    user = register_and_login(group_a, "rr")
    url = f"{group_a.auth_url}/auth/refresh"
    assert requests.post(url, json={"refresh_token": user.refresh_token}, timeout=TIMEOUT).status_code == 200
    assert requests.post(url, json={"refresh_token": user.refresh_token}, timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("kind", ["none", "NONE", "hs256_public_key", "expired"])
def test_jwt_faults_accept_forged_tokens(group_a, kind):
    user = register_and_login(group_a, "jwt")
    token = forge_token(group_a, user, kind)
    reply = requests.get(f"{group_a.backend_url}/threads", headers={"Authorization": f"Bearer {token}"},
                         timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    assert handshake_status(group_a, token) == 101


def test_faults_are_announced_in_banner_state_and_health(group_a):
    assert group_a.state["faults"] == sorted(GROUP_A)
    assert "PLANTED BUGS" in group_a.log_file.read_text()
    health = requests.get(f"{group_a.backend_url}/health", timeout=TIMEOUT).json()
    assert health["faults"] == sorted(GROUP_A)


def test_ws_origin_unchecked_accepts_a_foreign_origin(group_a):
    user = register_and_login(group_a, "org")
    assert handshake_status(group_a, user.access_token, origin="https://evil.example") == 101
    assert handshake_status(group_a, user.access_token, origin="null") == 101


def test_session_and_connection_leaks_show_in_redis_and_metrics(group_a):
    user = register_and_login(group_a, "leak")
    before = requests.get(f"{group_a.backend_url}/metrics", timeout=TIMEOUT).json()
    for _ in range(3):
        with open_socket(group_a, user.access_token) as ws:
            collect_run(ws, send_message(ws, "hi"))
    time.sleep(0.3)
    after = requests.get(f"{group_a.backend_url}/metrics", timeout=TIMEOUT).json()
    assert after["tracked_connections"] - before["tracked_connections"] == 3
    assert after["active_websockets"] == before["active_websockets"]
    store = redis.Redis.from_url(group_a.redis_url)
    assert len(list(store.scan_iter(f"session:{user.user_id}:*"))) == 3


def test_no_rate_limit_and_no_frame_limit(group_a):
    user = register_and_login(group_a, "limits")
    with open_socket(group_a, user.access_token) as ws:
        for _ in range(100):
            ws.send("{flood")
        codes = {receive(ws, "a flood answer")["code"] for _ in range(100)}
        assert codes == {"invalid_json"}
        big = "y" * (group_a.state["max_frame_bytes"] + 10)
        assert collect_run(ws, send_message(ws, big))[-1]["type"] == "agent_completed"


def test_crosstalk_delivers_events_to_another_users_socket(faulty_factory):
    running = faulty_factory("crosstalk")
    users = [register_and_login(running, f"ct{i}") for i in range(2)]
    foreign = []

    def chat_many(user):
        with open_socket(running, user.access_token) as ws:
            cmids = [send_message(ws, f"[[slow:20]] message {i}") for i in range(4)]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    frame = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    break
                if frame.get("user_id") not in (None, user.user_id) or (
                        frame.get("client_message_id") not in cmids):
                    foreign.append(frame)

    threads = [threading.Thread(target=chat_many, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert foreign, "no event reached the wrong socket"


def test_shared_context_leaks_one_users_history_into_anothers_answer(faulty_factory):
    running = faulty_factory("shared_context", "sql_concat")
    alice, bob = register_and_login(running, "alice"), register_and_login(running, "bob")
    answers = {}

    def two_messages(user, secret):
        with open_socket(running, user.access_token) as ws:
            first = collect_run(ws, send_message(ws, secret))
            thread_id = first[0]["thread_id"]
            second = collect_run(ws, send_message(ws, "what did I say before", thread_id=thread_id))
            answers[user.user_id] = first[-1]["payload"]["response"] + second[-1]["payload"]["response"]

    secrets = {alice.user_id: f"alice-{uuid.uuid4().hex}", bob.user_id: f"bob-{uuid.uuid4().hex}"}
    threads = [threading.Thread(target=two_messages, args=(u, secrets[u.user_id])) for u in (alice, bob)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    leaked = secrets[bob.user_id] in answers[alice.user_id] or secrets[alice.user_id] in answers[bob.user_id]
    assert leaked, answers


def test_sql_concat_breaks_on_a_quote(faulty_factory):
    running = faulty_factory("shared_context", "sql_concat")
    user = register_and_login(running, "sql")
    with open_socket(running, user.access_token) as ws:
        assert collect_run(ws, send_message(ws, "plain words"))[-1]["type"] == "agent_completed"
        assert collect_run(ws, send_message(ws, "it's quoted"))[-1]["type"] == "agent_error"


def test_drop_and_reorder_events_show_within_ten_runs(faulty_factory):
    running = faulty_factory("drop_event", "reorder_events")
    user = register_and_login(running, "order")
    with open_socket(running, user.access_token) as ws:
        runs = collect_runs(ws, [send_message(ws, f"run {i}") for i in range(10)])
    sequences = [[f["type"] for f in frames] for frames in runs.values()]
    assert any("tool_completed" not in types for types in sequences), sequences
    seqs = [[f["seq"] for f in frames] for frames in runs.values()]
    assert any(s != sorted(s) or s != list(range(1, len(s) + 1)) for s in seqs), seqs
