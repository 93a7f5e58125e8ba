"""Hostile input gets a 4xx and a clear body, never a 500, and the socket survives bad frames.

The fault switch ``hostile_input_500`` restores the 500s, so the suite's check can fail.
"""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest
import requests

from tests.platform.chatclient import TIMEOUT, chat, open_socket, receive, register_and_login, send_message

DEEP = "[" * 10000 + "]" * 10000
INTERNAL_NAMES = ("Error", "Exception", "Traceback", "asyncpg", "starlette")


def _post(url: str, body: bytes, token: str | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(url, data=body, headers=headers, timeout=TIMEOUT)


def _assert_clean(reply: requests.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["error"] == code and body["message"], body
    assert not any(name in reply.text for name in INTERNAL_NAMES), reply.text


def _write_endpoints(platform, user, thread_id):
    return [
        (f"{platform.auth_url}/auth/register", "email", None),
        (f"{platform.auth_url}/auth/login", "email", None),
        (f"{platform.auth_url}/auth/refresh", "refresh_token", None),
        (f"{platform.backend_url}/threads/{thread_id}/messages", "content", user.access_token),
        (f"{platform.backend_url}/workspaces", "name", user.access_token),
    ]


@pytest.fixture(scope="module")
def owner(platform):
    user = register_and_login(platform, "hostile")
    thread_id = chat(platform, user, "a thread to write into")[-1]["thread_id"]
    return user, thread_id


def test_oversized_body_is_413_before_parsing(platform, owner):
    user, thread_id = owner
    big = json.dumps({"email": "x@example.test", "password": "A" * (2 * 1024 * 1024)}).encode()
    for url, _, token in _write_endpoints(platform, user, thread_id):
        _assert_clean(_post(url, big, token), 413, "body_too_large")


def test_a_streamed_body_without_length_is_counted_and_refused(platform):
    # chunked transfer encoding: no Content-Length to check, so the bytes are counted as they arrive
    def chunks():
        yield b'{"email": "x@example.test", "password": "'
        for _ in range(40):
            yield b"A" * 65536
        yield b'"}'

    reply = requests.post(f"{platform.auth_url}/auth/register", data=chunks(),
                          headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    _assert_clean(reply, 413, "body_too_large")
    parts = iter([b'{"email": "a@b.cd", ', b'"password": 1}'])
    small = requests.post(f"{platform.auth_url}/auth/login", data=parts,
                          headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert small.status_code == 401, small.text  # a small streamed body is replayed to the endpoint


def test_a_content_length_that_is_not_a_number_is_400(platform):
    parts = urllib.parse.urlsplit(platform.auth_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as conn:
        conn.sendall(b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        answer = conn.recv(4096).decode(errors="replace")
    assert answer.split(" ", 2)[1].startswith("4"), answer  # the HTTP parser or the app: a 400 either way


@pytest.mark.parametrize(("kind", "body", "status", "code"), [
    ("deep", lambda field: ('{"' + field + '": ' + DEEP + "}").encode(), 400, "invalid_json"),
    ("33 levels", lambda field: ('{"' + field + '": ' + "[" * 32 + "]" * 32 + "}").encode(),
     400, "invalid_json"),
    ("invalid utf-8", lambda field: b'{"' + field.encode() + b'": "\xff\xfe"}', 400, "invalid_json"),
    ("not json", lambda field: b"{" + field.encode(), 400, "invalid_json"),
    ("nul", lambda field: json.dumps({field: "a\u0000b@example.test", "password": "long enough"}).encode(),
     422, "invalid_text"),
    ("surrogate", lambda field: ('{"' + field + '": "a\\ud800b@example.test", "password": "long"}').encode(),
     422, "invalid_text"),
])
def test_malformed_or_unstorable_json_is_4xx_on_every_write_endpoint(platform, owner, kind, body, status,
                                                                      code):
    user, thread_id = owner
    for url, field, token in _write_endpoints(platform, user, thread_id):
        _assert_clean(_post(url, body(field), token), status, code)


def test_32_levels_are_still_accepted(platform, owner):
    user, thread_id = owner
    body = json.dumps({"content": "nested extras are ignored", "extra": json.loads("[" * 31 + "]" * 31)})
    reply = _post(f"{platform.backend_url}/threads/{thread_id}/messages", body.encode(), user.access_token)
    assert reply.status_code == 201, reply.text


@pytest.mark.parametrize(("payload", "code"), [
    ('{"type": "user_message", "client_message_id": "d", "content": "x", "extra": '
     + "[" * 25000 + "]" * 25000 + "}", "invalid_json"),
    (b'{"type": "user_message", "client_message_id": "u", "content": "\xff"}', "invalid_json"),
    (json.dumps({"type": "user_message", "client_message_id": "n\u0000", "content": "x"}), "invalid_content"),
    ('{"type": "user_message", "client_message_id": "s", "content": "x\\ud800"}', "invalid_content"),
    (json.dumps({"type": "user_message", "client_message_id": "t", "content": 5}), "missing_field"),
])
def test_hostile_frames_get_an_error_frame_and_the_socket_stays(platform, owner, payload, code):
    user, _ = owner
    with open_socket(platform, user.access_token) as ws:
        ws.send(payload)
        frame = receive(ws, f"the error frame for {code}")
        assert frame["type"] == "error" and frame["code"] == code, frame
        assert not any(name in json.dumps(frame) for name in INTERNAL_NAMES), frame
        cmid = send_message(ws, "still here?")
        while (frame := receive(ws, "the answer after the hostile frame"))["type"] != "agent_completed":
            assert frame.get("client_message_id") == cmid, frame


def test_the_fault_switch_restores_the_500s(platform_factory):
    faulty = platform_factory(faults=["hostile_input_500"])
    user = register_and_login(faulty, "faulty")
    deep = _post(f"{faulty.auth_url}/auth/login", ('{"email": ' + DEEP + "}").encode())
    assert deep.status_code == 500 and "RecursionError" in deep.text, deep.text
    nul = _post(f"{faulty.backend_url}/workspaces", json.dumps({"name": "a\u0000b"}).encode(),
                user.access_token)
    assert nul.status_code >= 500 and "Error" in nul.text, nul.text
    with open_socket(faulty, user.access_token) as ws:
        ws.send('{"type": "user_message", "client_message_id": "d", "content": "x", "extra": '
                + "[" * 25000 + "]" * 25000 + "}")
        with pytest.raises(Exception):  # noqa: B017 - closed without an error frame, however the client says it
            receive(ws, "anything")
