"""Masking: no password or token reaches the log whole."""

from __future__ import annotations

import json
from types import SimpleNamespace

from crosstalk.htmllog import table, transcript
from crosstalk.model import Frame, TestUser, Tokens
from crosstalk.secrets import MaskedHeaders, mask, mask_body, mask_mapping, mask_password, mask_text, mask_url

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"


def test_mask_keeps_six_characters():
    assert mask(TOKEN) == "eyJhbG…"


def test_short_values_are_hidden_completely():
    assert mask("hunter2") == "***"
    assert mask("") == ""


def test_mask_accepts_secret_like_objects():
    assert mask(SimpleNamespace(value=TOKEN)) == "eyJhbG…"


def test_mask_text_finds_jwts_bearer_and_url_passwords():
    text = f"Authorization: Bearer {TOKEN} url=postgresql://app:s3cret@db:5432/x and {TOKEN}"
    masked = mask_text(text)
    assert TOKEN not in masked and "s3cret" not in masked
    assert "postgresql://app:***@db" in masked


def test_passwords_are_hidden_completely():
    assert mask_password("correct horse battery") == "*** (21 chars)"
    assert "corr" not in mask_password(SimpleNamespace(value="correct horse"))


def test_mask_url():
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("http://host") == "http://host"


def test_mask_mapping_masks_secret_keys_at_any_depth():
    body = {"email": "a@b.c", "password": "correct horse battery", "nested": [{"access_token": TOKEN}]}
    masked = mask_mapping(body)
    assert masked["email"] == "a@b.c"
    assert masked["password"] == "*** (21 chars)"
    assert masked["nested"][0]["access_token"] == "eyJhbG…"


def test_mask_body_handles_json_bytes_and_text():
    body = json.dumps({"refresh_token": TOKEN, "password": "password123456"}).encode()
    assert TOKEN not in mask_body(body) and "password123456" not in mask_body(body)
    assert mask_body(f"token {TOKEN}") == "token eyJhbG…"
    assert mask_body(None) is None


def test_tokens_and_headers_log_masked():
    tokens = Tokens(TOKEN, TOKEN[::-1])
    assert TOKEN not in repr(tokens) and TOKEN not in str(tokens)
    headers = MaskedHeaders(Authorization=f"Bearer {TOKEN}")
    assert TOKEN not in repr(headers) and headers["Authorization"] == f"Bearer {TOKEN}"


def test_transcript_escapes_and_masks():
    user = TestUser("alice", "alice@x.test", "pw", "CANARY-1")
    raw = json.dumps({"type": "error", "code": "<script>alert(1)</script>", "message": TOKEN})
    user.frames.append(Frame("in", 1.0, 1.0, raw, json.loads(raw), "alice#1"))
    html = transcript(user)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert TOKEN not in html


def test_table_caps_rows_and_says_so():
    html = table(("n",), ([i] for i in range(1000)), max_rows=10)
    assert html.count("<tr>") == 1 + 10 + 1
    assert "990 rows omitted" in html
