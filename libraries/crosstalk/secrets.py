"""Masking helpers: passwords and tokens never reach log.html in full.

A masked value keeps a short prefix so two different tokens can still be told
apart in a transcript (``eyJhbG…``), and nothing else.
"""

from __future__ import annotations

import re
from typing import Any

ELLIPSIS = "…"
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_URL_PASSWORD_RE = re.compile(r"(://[^:/@\s]+:)[^@\s]*@")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)(\S+)")
SECRET_KEYS = frozenset(
    {"password", "access_token", "refresh_token", "token", "authorization", "secret", "new_password"}
)


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


def mask_url(url: str) -> str:
    """Hide the password of a ``scheme://user:password@host`` URL."""
    return _URL_PASSWORD_RE.sub(r"\1***@", url or "")


def mask_text(text: str) -> str:
    """Mask every JWT, Bearer credential and URL password found in free text."""
    text = _URL_PASSWORD_RE.sub(r"\1***@", text or "")
    text = _BEARER_RE.sub(lambda m: m.group(1) + mask(m.group(2)), text)
    return _JWT_RE.sub(lambda m: mask(m.group(0)), text)


def mask_mapping(data: Any) -> Any:
    """Copy of a JSON-like structure with values under secret-looking keys masked."""
    if isinstance(data, dict):
        return {
            key: mask(value) if str(key).lower() in SECRET_KEYS else mask_mapping(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [mask_mapping(item) for item in data]
    if isinstance(data, str):
        return mask_text(data)
    return data
