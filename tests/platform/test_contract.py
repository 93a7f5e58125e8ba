"""The reference platform meets its own machine-readable contract: every frame it sends validates against
docs/contract/asyncapi.yaml and every REST answer against docs/contract/openapi.yaml."""

from __future__ import annotations

import json

import pytest
import requests
from crosstalk.contract import FrameContract, openapi_validator

from tests.platform.chatclient import (
    PASSWORD,
    TIMEOUT,
    collect_run,
    open_socket,
    receive,
    register_and_login,
    send_message,
)


def assert_conforms(reply: requests.Response, path: str, method: str) -> None:
    status = str(reply.status_code)
    validator = openapi_validator(path, method, status)  # raises when the status is not in the contract
    if validator is None:
        return
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(reply.json())]
    assert errors == [], f"{method.upper()} {path} -> {status}: {errors}"


def test_every_frame_of_a_run_and_of_refusals_validates(platform):
    contract = FrameContract.load()
    user = register_and_login(platform, "contract")
    frames = []
    with open_socket(platform, user.access_token) as ws:
        frames += collect_run(ws, send_message(ws, "How much does the plan cost?"))
        thread = frames[-1]["thread_id"]
        frames += collect_run(ws, send_message(ws, "and the security of it?", thread_id=thread))
        frames += collect_run(ws, send_message(ws, "[[fail]] please"))
        frames += collect_run(ws, send_message(ws, "x", thread_id="not-a-thread"))
        for raw in ("not json", "[1]", json.dumps({"type": "nope"}), json.dumps({"type": "user_message"})):
            ws.send(raw)
            frames.append(receive(ws, f"the error answering {raw!r}"))
    kinds = {f["type"] for f in frames}
    assert kinds == {"agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed",
                     "agent_error", "error"}
    problems = [contract.check(f) for f in frames]
    assert [p for p in problems if p] == []


def test_every_auth_answer_validates(platform):
    auth = platform.auth_url
    user = register_and_login(platform, "contract")
    assert_conforms(requests.post(f"{auth}/auth/register", json={"email": "x", "password": PASSWORD},
                                  timeout=TIMEOUT), "/auth/register", "post")
    assert_conforms(requests.post(f"{auth}/auth/register", json={"email": user.email, "password": PASSWORD},
                                  timeout=TIMEOUT), "/auth/register", "post")
    login = requests.post(f"{auth}/auth/login", json={"email": user.email, "password": PASSWORD},
                          timeout=TIMEOUT)
    assert_conforms(login, "/auth/login", "post")
    assert_conforms(requests.post(f"{auth}/auth/login", json={"email": user.email, "password": "wrong-pw"},
                                  timeout=TIMEOUT), "/auth/login", "post")
    refresh = requests.post(f"{auth}/auth/refresh", json={"refresh_token": login.json()["refresh_token"]},
                            timeout=TIMEOUT)
    assert_conforms(refresh, "/auth/refresh", "post")
    assert_conforms(requests.post(f"{auth}/auth/refresh", json={"refresh_token": "nope"}, timeout=TIMEOUT),
                    "/auth/refresh", "post")
    assert_conforms(requests.get(f"{auth}/auth/me", headers=user.headers, timeout=TIMEOUT), "/auth/me", "get")
    assert_conforms(requests.get(f"{auth}/auth/me", timeout=TIMEOUT), "/auth/me", "get")
    assert_conforms(requests.get(f"{auth}/.well-known/jwks.json", timeout=TIMEOUT), "/.well-known/jwks.json",
                    "get")
    assert_conforms(requests.get(f"{auth}/health", timeout=TIMEOUT), "/health", "get")
    assert_conforms(requests.post(f"{auth}/auth/login", data=b"{not json", timeout=TIMEOUT,
                                  headers={"Content-Type": "application/json"}), "/auth/login", "post")
    assert_conforms(requests.post(f"{auth}/auth/register", data=b"x" * (2 * 2**20), timeout=TIMEOUT,
                                  headers={"Content-Type": "application/json"}), "/auth/register", "post")
    assert_conforms(requests.post(f"{auth}/auth/logout", headers=user.headers, timeout=TIMEOUT),
                    "/auth/logout", "post")
    assert_conforms(requests.post(f"{auth}/auth/logout", headers=user.headers, timeout=TIMEOUT),
                    "/auth/logout", "post")


def test_every_backend_answer_validates(platform):
    base = platform.backend_url
    user = register_and_login(platform, "contract")
    with open_socket(platform, user.access_token) as ws:
        thread = collect_run(ws, send_message(ws, "hello"))[-1]["thread_id"]
    h = user.headers
    calls = [
        (requests.get(f"{base}/health", timeout=TIMEOUT), "/health", "get"),
        (requests.get(f"{base}/metrics", timeout=TIMEOUT), "/metrics", "get"),
        (requests.get(f"{base}/threads", headers=h, timeout=TIMEOUT), "/threads", "get"),
        (requests.get(f"{base}/threads", timeout=TIMEOUT), "/threads", "get"),
        (requests.get(f"{base}/threads/{thread}", headers=h, timeout=TIMEOUT), "/threads/{thread_id}", "get"),
        (requests.get(f"{base}/threads/nope", headers=h, timeout=TIMEOUT), "/threads/{thread_id}", "get"),
        (requests.get(f"{base}/threads/{thread}/messages", headers=h, timeout=TIMEOUT),
         "/threads/{thread_id}/messages", "get"),
        (requests.post(f"{base}/threads/{thread}/messages", json={"content": "note"}, headers=h,
                       timeout=TIMEOUT), "/threads/{thread_id}/messages", "post"),
        (requests.post(f"{base}/threads/{thread}/messages", json={}, headers=h, timeout=TIMEOUT),
         "/threads/{thread_id}/messages", "post"),
        (requests.post(f"{base}/workspaces", json={"name": "w"}, headers=h, timeout=TIMEOUT), "/workspaces",
         "post"),
        (requests.post(f"{base}/workspaces", json={"name": ""}, headers=h, timeout=TIMEOUT), "/workspaces",
         "post"),
        (requests.post(f"{base}/workspaces", json={"name": "w"}, timeout=TIMEOUT), "/workspaces", "post"),
        (requests.post(f"{base}/workspaces", json={"name": "w"},
                       headers={**h, "X-Crosstalk-Inject": "workspace_backend_fail"}, timeout=TIMEOUT),
         "/workspaces", "post"),
        (requests.post(f"{base}/workspaces", json={"name": "w"}, headers={**h, "X-Crosstalk-Inject": "nope"},
                       timeout=TIMEOUT), "/workspaces", "post"),
        (requests.get(f"{base}/workspaces", headers=h, timeout=TIMEOUT), "/workspaces", "get"),
        (requests.delete(f"{base}/threads/{thread}", headers=h, timeout=TIMEOUT), "/threads/{thread_id}",
         "delete"),
        (requests.delete(f"{base}/threads/{thread}", headers=h, timeout=TIMEOUT), "/threads/{thread_id}",
         "delete"),
    ]
    statuses = {(path, method, reply.status_code) for reply, path, method in calls}
    assert ("/workspaces", "post", 503) in statuses and ("/workspaces", "post", 400) in statuses
    for reply, path, method in calls:
        assert_conforms(reply, path, method)


@pytest.mark.parametrize("service", ["auth_url", "backend_url"])
def test_prometheus_endpoint_is_described(platform, service):
    reply = requests.get(f"{platform.state[service]}/metrics/prometheus", timeout=TIMEOUT)
    assert reply.status_code == 200 and "process_cpu_seconds_total" in reply.text
