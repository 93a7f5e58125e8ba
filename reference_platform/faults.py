"""Fault switches: small, honest bugs planted in the platform's real code paths.

They exist so that Crosstalk can prove each of its checks fails when the bug it
guards against is present.  They are enabled only at start (``--faults`` or
``REFPLAT_FAULTS``), never by a request, and announced loudly on stderr.

To add a switch: add its name and one-line description to ``FAULTS`` and guard the
buggy branch of the real code path with ``faults.on("name")``.
"""

from __future__ import annotations

import os

FAULTS: dict[str, str] = {
    "crosstalk": "events are sent through a shared 'current connection' variable, so under "
    "concurrency an event reaches another user's socket",
    "shared_context": "the agent context cache is keyed without the user (and thread), so one "
    "user's history leaks into another user's answer",
    "bola_rest": "GET /threads/{id}, GET /threads/{id}/messages and DELETE /threads/{id} skip the "
    "owner check",
    "bola_ws": "a WebSocket user_message with another user's thread_id is accepted",
    "drop_event": "every 3rd run loses its tool_completed event (fire-and-forget send)",
    "reorder_events": "every 3rd run sends tool_completed before tool_executing",
    "logout_no_revoke": "logout answers 204 but does not put the access token on the denylist",
    "logout_keeps_refresh": "logout revokes the access token but not its refresh-token family, so the "
    "session's refresh token still mints new access tokens",
    "refresh_reuse": "a used refresh token is accepted again and the token family is not revoked",
    "jwt_alg_none": "access tokens with alg 'none' (any case) are accepted without a signature",
    "jwt_hs256_confusion": "HS256 tokens are verified with the RSA public key PEM as HMAC secret",
    "jwt_accept_expired": "expired access tokens are accepted (exp not verified)",
    "ws_origin_unchecked": "the WebSocket handshake does not check the Origin header",
    "session_leak": "the Redis session record is not removed when the socket closes",
    "connection_leak": "the per-connection registry entry (with its buffers) is never freed",
    "no_rate_limit": "no per-user message rate limit on the WebSocket",
    "no_frame_limit": "no size limit on WebSocket frames",
    "sql_concat": "message content is concatenated into SQL instead of passed as a parameter",
    "lost_update": "POST /threads/{id}/messages bumps message_count as read-modify-write without a lock",
    "cache_key_collision": "the cached thread list (GET /threads) is keyed without the user id",
    "refresh_race": "refresh checks the token is unused, then marks it used in a second statement",
    "redis_cancel_leak": "a cache read cancelled by a client disconnect returns its Redis connection to "
    "the pool with the reply unread (redis-py 2624, the ChatGPT incident of March 2023)",
    "hostile_input_500": "request bodies and frames are parsed without the nesting-depth and text checks, "
    "and unexpected errors are answered with their exception name: deep JSON gives a 500 naming "
    "RecursionError, NUL text a database error, a deep frame drops the socket",
    "no_rollback": "POST /workspaces commits each store on its own, so a failing step leaves the "
    "earlier ones applied",
    "identity_from_frame": "a WebSocket user_message's own 'user_id' field names the owner of what it "
    "stores (mass assignment): one user writes as another",
    "identity_from_body": "POST /workspaces honours an 'owner_id' or 'user_id' in the body as the owner",
    "token_in_query": "the WebSocket handshake also takes ?access_token= / ?token= from the URL, verified "
    "but never checked against the revocation denylist",
    "login_enumeration": "login with an unknown email answers at once, without the dummy argon2 "
    "verification: the timing tells which emails exist",
    "message_wrong_thread": "the agent's answer is stored in the user's newest thread instead of the "
    "run's own thread (the stream is right, the store is not)",
    "stale_list_after_delete": "DELETE /threads/{id} does not invalidate the cached thread list",
    "prepared_xact_leak": "a failed POST /workspaces rolls back the open step but forgets the prepared "
    "ones: their locks stay and the user's next workspace stalls",
    "counter_two_writers": "an agent run writes back the message_count it read when it started, + 1: "
    "notes written meanwhile are lost from the counter",
    "scan_all_keys": "every run counts the user's sessions with SCAN MATCH session:{user}:*, which walks "
    "every key of every user in Redis",
    "event_timestamp_drift": "event frames carry timestamp as epoch seconds (a number) instead of ISO 8601 "
    "text: a contract break only the frame schema sees",
    "unfair_scheduling": "a tenant-priority bug: every second user (in the order they first chat) has their "
    "agent runs paced 8 times slower than the others'",
    "workspace_backend_fail": "failure injection, not a bug: step 2 of POST /workspaces (backend) fails",
    "workspace_analytics_fail": "failure injection, not a bug: step 3 of POST /workspaces (analytics) fails",
}

ENV_VAR = "REFPLAT_FAULTS"

_enabled: frozenset[str] = frozenset()


class UnknownFaultError(ValueError):
    pass


def parse(spec: str | None) -> list[str]:
    """Names from a comma list; raises UnknownFaultError naming the valid ones."""
    names = [name.strip() for name in (spec or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in FAULTS]
    if unknown:
        raise UnknownFaultError(
            f"unknown fault switch(es) {', '.join(unknown)}; valid names: {', '.join(sorted(FAULTS))}"
        )
    return sorted(set(names))


def enable(names: list[str] | tuple[str, ...]) -> None:
    global _enabled
    _enabled = frozenset(parse(",".join(names)))


def on(name: str) -> bool:
    if name not in FAULTS:  # a typo here would silently disable a fault: fail loudly instead
        raise KeyError(f"no fault switch named {name!r}")
    return name in _enabled


def enabled() -> list[str]:
    return sorted(_enabled)


def banner(names: list[str]) -> str:
    line = "!" * 78
    body = "\n".join(f"!!  FAULT {name}: {FAULTS[name]}" for name in names)
    title = "!!  REFERENCE PLATFORM RUNNING WITH PLANTED BUGS - NOT A CORRECT PLATFORM"
    return f"{line}\n{title}\n{body}\n{line}"


def from_environment() -> list[str]:
    return parse(os.environ.get(ENV_VAR, ""))
