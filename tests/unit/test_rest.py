"""The backend REST client's pure parts: masked bearer headers, bodies, the URL from the target context."""

from __future__ import annotations

import pytest
import requests
from crosstalk import context, rest
from crosstalk.context import build


def _reply(body: bytes, status: int = 200) -> requests.Response:
    reply = requests.Response()
    reply.status_code, reply._content = status, body
    return reply


def test_bearer_header_is_masked_when_logged():
    headers = rest.bearer("eyJhbGciOiJSUzI1NiJ9.secret-part.signature")
    assert headers["Authorization"] == "Bearer eyJhbGciOiJSUzI1NiJ9.secret-part.signature"
    assert "secret-part" not in repr(headers) and "secret-part" not in str(headers)


def test_json_or_text():
    assert rest.json_or_text(_reply(b'{"failed_step": "backend"}')) == {"failed_step": "backend"}
    assert rest.json_or_text(_reply(b"x" * 300, 502)) == "x" * 200


def test_service_url_comes_from_the_target_context_and_says_what_to_do():
    previous = context.peek()
    try:
        context.install(build({"AUTH_URL": "http://a/", "BACKEND_URL": "http://b/"}, {}))
        assert rest.service_url() == "http://b" and rest.service_url("AUTH_URL") == "http://a"
        context.install(build({"AUTH_URL": "http://a"}, {}))
        with pytest.raises(rest.RestError, match="BACKEND_URL is not set: run 'Start Or Attach Platform'"):
            rest.service_url()
    finally:
        context.install(previous)
