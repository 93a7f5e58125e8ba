"""Masking helpers: passwords and tokens never reach log.html in full.

A masked value keeps a short prefix so two different tokens can still be told
apart in a transcript (``eyJhbG…``), and nothing else.
"""

from __future__ import annotations

import json
import re
from typing import Any

ELLIPSIS = "…"
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_URL_PASSWORD_RE = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)(\S+)")
SECRET_KEYS = frozenset({"access_token", "refresh_token", "token", "authorization", "secret"})


def mask(value: Any, keep: int = 6) -> str:
    """Return ``value`` as text with all but its first ``keep`` characters hidden.

    Short values (``keep`` characters or fewer) are hidden completely so that a
    short password is never shown whole.
    """
    text = "" if value is None else str(getattr(value, "value", value))
    if not text:
        return ""
    if len(text) <= keep * 2:
        return "***"
    return text[:keep] + ELLIPSIS


def mask_password(value: Any) -> str:
    """Hide a password completely (a prefix of a password is a gift to an attacker); keep its length."""
    text = "" if value is None else str(getattr(value, "value", value))
    return f"*** ({len(text)} chars)" if text else ""


def mask_url(url: str) -> str:
    """Hide the password of a ``scheme://user:password@host`` URL."""
    return _URL_PASSWORD_RE.sub(r"\1***@", url or "")


_DSN_PASSWORD_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """Hide the password in a URL or a key=value DSN (``password='s3 cret'``) before it reaches a log."""
    return _DSN_PASSWORD_RE.sub(r"\1***", mask_url(dsn))


def mask_text(text: str) -> str:
    """Mask every JWT, Bearer credential and URL password found in free text."""
    text = _URL_PASSWORD_RE.sub(r"\1***@", text or "")
    text = _BEARER_RE.sub(lambda m: m.group(1) + mask(m.group(2)), text)
    return _JWT_RE.sub(lambda m: mask(m.group(0)), text)


def _mask_item(key: str, value: Any) -> Any:
    if "password" in key:
        return mask_password(value)
    if key in SECRET_KEYS:
        return mask(value)
    return mask_mapping(value)


def mask_mapping(data: Any) -> Any:
    """Copy of a JSON-like structure with values under secret-looking keys masked."""
    if isinstance(data, dict):
        return {key: _mask_item(str(key).lower(), value) for key, value in data.items()}
    if isinstance(data, list):
        return [mask_mapping(item) for item in data]
    if isinstance(data, str):
        return mask_text(data)
    return data


def mask_body(data: Any) -> Any:
    """A logged HTTP body with secret JSON fields and tokens masked (other types unchanged)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    if not isinstance(data, str):
        return data
    try:
        parsed = json.loads(data)
    except ValueError:
        return mask_text(data)
    return json.dumps(mask_mapping(parsed))


def protect_requests_library_log() -> bool:
    """Make RequestsLibrary (0.9.x logs the Authorization header and bodies in full) log masked values.

    Idempotent; returns False when RequestsLibrary is not installed.  Headers
    are masked on the logged request only for the duration of the log call.
    """
    try:
        from RequestsLibrary import log as rl_log
    except ImportError:
        return False
    if getattr(rl_log, "_crosstalk_masked", False):
        return True
    original_format = rl_log.format_data_to_log_string
    original_log_request = rl_log.log_request

    def format_data_to_log_string(data: Any, *args: Any, **kwargs: Any) -> Any:
        return original_format(mask_body(data), *args, **kwargs)

    def log_request(response: Any) -> None:
        requests_seen = [response.request, *(r.request for r in response.history or [])]
        saved = []
        for request in requests_seen:
            value = request.headers.get("Authorization")
            if value:
                saved.append((request, value))
                request.headers["Authorization"] = mask_text(value)
        try:
            original_log_request(response)
        finally:
            for request, value in saved:
                request.headers["Authorization"] = value

    rl_log.format_data_to_log_string = format_data_to_log_string
    rl_log.log_request = log_request
    rl_log._crosstalk_masked = True  # noqa: SLF001 - our own marker on RequestsLibrary's module: patch once
    return True


class MaskedHeaders(dict):
    """A headers dict that shows its secret values masked when Robot logs it."""

    def __repr__(self) -> str:
        return repr({key: mask_text(str(value)) for key, value in self.items()})

    __str__ = __repr__
