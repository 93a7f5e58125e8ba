"""Hostile probes and how answers to them are judged (pure logic)."""

from __future__ import annotations

import json

from crosstalk import hostile

ENDPOINT = hostile.RestEndpoint("register", "POST", "http://x/auth/register", ("email", "password"))


def test_every_endpoint_gets_every_kind_of_probe_with_one_flaw_each():
    probes = hostile.rest_probes([ENDPOINT], body_bytes=4096, depth=100, unique="u1")
    kinds = [p.kind for p in probes]
    assert len(kinds) == 7 and kinds[0].startswith("oversized")
    oversized = probes[0]
    assert oversized.oversized and len(oversized.body) > 4096 and json.loads(oversized.body)["password"]
    deep = probes[1].body
    assert deep.count(b"[") == 100
    assert isinstance(json.loads(probes[2].body)["email"], list)
    assert probes[4].body.find(b"\xff") > 0
    assert "\x00" in json.loads(probes[5].body)["email"]
    assert "\\ud800" in probes[6].body.decode() or "\\udfff" in probes[6].body.decode()


def test_frames_stay_under_a_64_kb_frame_limit_by_default():
    frames = hostile.frame_probes(20000, "u1")
    assert all(len(f.payload) < 65536 for f in frames)
    assert isinstance(frames[1].payload, bytes)


def test_answers_are_judged_on_5xx_internals_and_drops_only():
    assert hostile.judge_answer(400, '{"error": "invalid_json"}') is None
    assert hostile.judge_answer(201, '{"user_id": "x"}') is None  # accepted: reported, not failed
    assert hostile.judge_answer(500, "Internal Server Error") == "answered HTTP 500"
    assert "RecursionError" in hostile.judge_answer(500, '{"message": "RecursionError: depth"}')
    assert "naming internals" in hostile.judge_answer(422, 'Traceback (most recent call last): ...')
    assert hostile.judge_answer(None, "", oversized=True) is None
    assert "dropped" in hostile.judge_answer(None, "")


def test_internal_names_are_recognised_without_flagging_ordinary_messages():
    assert hostile.internals_in("asyncpg.exceptions.CharacterNotInRepertoireError: 0x00") == "asyncpg"
    assert hostile.internals_in('File "/app/x.py", line 3, in f') is not None
    assert hostile.internals_in("strings must be valid Unicode without NUL characters") is None
    assert hostile.internals_in('{"error": "internal_error", "message": "the server could not"}') is None


def test_frames_are_judged_on_error_frames_and_open_sockets():
    assert hostile.judge_frame({"type": "error", "code": "invalid_json"}, None) is None
    assert "closed" in hostile.judge_frame(None, "code 1006")
    assert hostile.judge_frame(None, None) == "no error frame arrived"
    assert "internal_error" in hostile.judge_frame({"type": "error", "code": "internal_error"}, None)
    assert "agent_started" in hostile.judge_frame({"type": "agent_started"}, None)
    leaked = {"type": "agent_error", "payload": {"message": "KeyError"}}
    assert "internals" in hostile.judge_frame(leaked, None)
