"""Probes of a target at suite setup: each answers within a few seconds with one line or nothing.

A probe of a *required* part (backend, auth, WebSocket) or of a store URL that
was given raises `ConfigurationError` (one line naming the variable, its
``CROSSTALK_*`` form and what to do).  The signing-key probe never raises: it
returns a `CapabilityState` whose reason says why bad-claim tests skip.

Example:
    probe_backend("https://api.example.test")   # raises ConfigurationError on an HTML 404
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from crosstalk.context import (
    Capability,
    CapabilityState,
    ConfigurationError,
    TargetContext,
    how_to_set,
    is_off,
)
from crosstalk.secrets import mask_url

TIMEOUT = 3.0


def _fix(name: str) -> str:
    return f"fix {how_to_set(name)}"


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return "host name does not resolve"
    if "timed out" in text or isinstance(exc, TimeoutError | requests.Timeout):
        return f"no answer within {TIMEOUT:g} s"
    if "ssl" in text or "certificate" in text:
        return "TLS handshake failed"
    return type(exc).__name__


def _content_type(response: requests.Response) -> str:
    return (response.headers.get("content-type") or "no content type").split(";")[0].strip()


def _get(name: str, url: str, path: str, service: str) -> requests.Response:
    """``GET {url}{path}``; an unreachable ``name`` fails with one line naming the ``service`` to start."""
    try:
        return requests.get(url.rstrip("/") + path, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise ConfigurationError(
            f"{name} {mask_url(url)} is unreachable ({_reason(exc)}): start the {service} or "
            f"{_fix(name)}.") from None


def _not_the_contract(name: str, url: str, path: str, response: requests.Response, what: str,
                      base: str) -> ConfigurationError:
    return ConfigurationError(
        f"{name} {mask_url(url)}: GET {path} answered {response.status_code} {_content_type(response)}, "
        f"not {what}: set {name} to {base} ({how_to_set(name)}).")


def probe_backend(url: str) -> dict[str, Any]:
    """``GET {url}/health`` must answer 200 with JSON; returns that JSON."""
    response = _get("BACKEND_URL", url, "/health", "backend")
    if response.status_code != 200:
        raise _not_the_contract("BACKEND_URL", url, "/health", response, "the contract's health JSON",
                                "the backend's base URL")
    try:
        body = response.json()
    except ValueError:
        raise ConfigurationError(
            f"BACKEND_URL {mask_url(url)}: GET /health answered 200 {_content_type(response)}, not JSON: "
            f"is this the backend? {_fix('BACKEND_URL')}.") from None
    return body if isinstance(body, dict) else {}


def probe_auth(url: str) -> dict[str, Any]:
    """``GET {url}/.well-known/jwks.json`` must answer 200 with a JWKS; returns it."""
    path = "/.well-known/jwks.json"
    response = _get("AUTH_URL", url, path, "auth service")
    try:
        jwks = response.json() if response.status_code == 200 else None
    except ValueError:
        jwks = None
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise _not_the_contract("AUTH_URL", url, path, response, "a JWKS", "the auth service's base URL")
    return jwks


def probe_websocket(url: str) -> None:
    """A handshake without a token must reach the server (refused with 401/4401 is fine)."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    if not url.startswith(("ws://", "wss://")):
        raise ConfigurationError(f"WS_URL '{url}' is not a ws(s):// URL: {_fix('WS_URL')}.")
    try:
        with connect(url, open_timeout=TIMEOUT, close_timeout=1):
            return
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            return
        raise ConfigurationError(
            f"WS_URL {mask_url(url)}: the handshake without a token answered HTTP {status} instead of 401: "
            f"set WS_URL to the agent WebSocket ({how_to_set('WS_URL')}).") from None
    except (InvalidHandshake, WebSocketException):
        return  # the server spoke WebSocket (e.g. accepted, then closed with 4401)
    except (OSError, TimeoutError) as exc:
        raise ConfigurationError(
            f"WS_URL {mask_url(url)} is unreachable ({_reason(exc)}): {_fix('WS_URL')} (default: BACKEND_URL "
            "with ws(s):// and /ws).") from None


def probe_postgres(name: str, url: str) -> None:
    """Connect once; wrong credentials, host or database name fail with one line naming ``name``."""
    import psycopg2

    if "://" not in url:
        raise ConfigurationError(
            f"{name} '{mask_url(url)}' is not a postgresql:// URL: {_fix(name)}, or set it to off.")
    try:
        psycopg2.connect(url, connect_timeout=int(TIMEOUT)).close()
    except psycopg2.Error as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        first = first.split("FATAL:", 1)[-1].strip()
        if "password authentication failed" in first or "no password supplied" in first:
            what = "wrong database credentials"
        elif "does not exist" in first:
            what = first
        else:
            what = first[:160]
        raise ConfigurationError(f"{name} {mask_url(url)} is not usable ({what}): {_fix(name)}, "
                                 "or set it to off to skip the checks that read it.") from None


def probe_redis(url: str) -> None:
    """PING once; a refused AUTH, a wrong scheme or an unreachable server fail with one line."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    except ValueError:
        raise ConfigurationError(
            f"REDIS_URL '{mask_url(url)}' is not a redis:// or rediss:// URL: {_fix('REDIS_URL')}, "
            "or set it to off.") from None
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        if "required" in str(exc).lower() or not urlsplit(url).password:
            raise ConfigurationError(
                f"REDIS_URL {mask_url(url)}: Redis requires a password: put it in the URL, "
                f"redis://:PASSWORD@host:port/0 ({how_to_set('REDIS_URL')}).") from None
        raise ConfigurationError(
            f"REDIS_URL {mask_url(url)}: Redis refused AUTH (wrong password or user): {_fix('REDIS_URL')}."
        ) from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "AUTH" in str(exc).upper():
            raise ConfigurationError(
                f"REDIS_URL {mask_url(url)}: Redis requires a password (NOAUTH): put it in the URL, "
                f"redis://:PASSWORD@host:port/0 ({how_to_set('REDIS_URL')}).") from None
        raise ConfigurationError(
            f"REDIS_URL {mask_url(url)}: {str(exc)[:160]}: {_fix('REDIS_URL')}.") from None
    except redis.RedisError as exc:
        raise ConfigurationError(
            f"REDIS_URL {mask_url(url)} is unreachable ({_reason(exc)}): {_fix('REDIS_URL')}, or set it "
            "to off.") from None
    finally:
        client.close()


def _b64_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def probe_signing_key(key_file: str, jwks: dict[str, Any]) -> tuple[CapabilityState, Any, str | None]:
    """Check the PEM private key in ``key_file`` against the target's JWKS.

    Returns the capability state, the loaded key (or None) and the matching
    ``kid``.  Missing, unreadable, malformed or foreign keys give a state that
    is not available, with the reason; a bad-claim token is then never forged.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa

    from crosstalk.tokens import load_private_key

    how = how_to_set("JWT_PRIVATE_KEY")
    if not key_file:
        reason = "set JWT_PRIVATE_KEY (CROSSTALK_JWT_PRIVATE_KEY) to the platform's PEM signing key"
        return CapabilityState(False, reason), None, None
    path = Path(key_file)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        what = "does not exist" if isinstance(exc, FileNotFoundError) else f"is unreadable ({exc.strerror})"
        return CapabilityState(False, f"JWT_PRIVATE_KEY file {path} {what}: fix {how}"), None, None
    try:
        key = load_private_key(pem)
    except (ValueError, TypeError) as exc:
        encrypted = "password" in str(exc).lower()
        what = ("is encrypted (give an unencrypted PEM)" if encrypted
                else "is not an unencrypted PEM private key")
        return CapabilityState(False, f"JWT_PRIVATE_KEY file {path} {what}: fix {how}"), None, None
    if not isinstance(key, rsa.RSAPrivateKey):
        return CapabilityState(False, f"JWT_PRIVATE_KEY file {path} is not an RSA key (RS256): fix {how}"), \
            None, None
    numbers = key.public_key().public_numbers()
    kids = []
    for jwk in jwks.get("keys", []):
        kids.append(str(jwk.get("kid")))
        try:
            same = _b64_int(jwk["n"]) == numbers.n and _b64_int(jwk["e"]) == numbers.e
            if jwk.get("kty") == "RSA" and same:
                return CapabilityState(True, detail=f"JWT_PRIVATE_KEY matches JWKS kid {jwk.get('kid')}"), \
                    key, jwk.get("kid")
        except (KeyError, ValueError, TypeError):
            continue
    return CapabilityState(
        False, f"JWT_PRIVATE_KEY {path} does not match any key of the target's JWKS (kids: "
               f"{', '.join(kids) or 'none'}): give the platform's own signing key ({how})"), None, None


def probe(ctx: TargetContext, jwks: dict[str, Any] | None = None) -> None:
    """Probe everything a configured target was given; fill the signing-key capability.  Raises on errors."""
    if ctx.configured:
        probe_backend(ctx.get("BACKEND_URL"))
        jwks = probe_auth(ctx.get("AUTH_URL"))
        probe_websocket(ctx.get("WS_URL"))
        for name in ("AUTH_DATABASE_URL", "BACKEND_DATABASE_URL"):
            if ctx.get(name):
                probe_postgres(name, ctx.get(name))
        if ctx.get("ANALYTICS_DATABASE_URL") and ctx.sources.get("ANALYTICS_DATABASE_URL") != "derived":
            probe_postgres("ANALYTICS_DATABASE_URL", ctx.get("ANALYTICS_DATABASE_URL"))
        if ctx.get("REDIS_URL"):
            probe_redis(ctx.get("REDIS_URL"))
    if is_off(ctx.values.get("JWT_PRIVATE_KEY")):
        return  # switched off: the static reason stands
    if jwks is None:
        jwks = probe_auth(ctx.get("AUTH_URL"))
    state, key, kid = probe_signing_key(ctx.get("JWT_PRIVATE_KEY"), jwks)
    ctx.capabilities[Capability.SIGNING_KEY] = state
    ctx.signing_key, ctx.signing_kid = key, kid
