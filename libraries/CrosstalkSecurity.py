"""Security probes over the agent WebSocket: handshakes that must be refused,
hostile frames, floods, and the server closing a socket on revocation.

The chat library keeps well-behaved, long-lived connections per user; a probe is
the opposite: a socket opened with whatever token and ``Origin`` an attacker
would send, used for a few frames and judged by how the server refuses it.
Probes use the synchronous ``websockets`` client (its own reader thread buffers
frames), so they need no event loop and never share state with chat sockets.
"""

from __future__ import annotations

import base64
import concurrent.futures
import enum
import hashlib
import hmac
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jwt
import redis
import requests
from crosstalk.model import TestUser
from cryptography.hazmat.primitives import serialization
from robot.api import logger
from robot.api.deco import keyword, library
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

DEFAULT_TIMEOUT = timedelta(seconds=10)


class TokenKind(enum.Enum):
    """Ways to break an access token (OWASP WSTG-SESS-10, API2:2023)."""

    alg_none = "alg none"
    alg_None = "alg None"
    alg_NONE = "alg NONE"
    signature_stripped = "signature stripped"
    payload_tampered = "payload tampered"
    hs256_public_key = "hs256 signed with the public key"
    kid_elsewhere = "kid pointing elsewhere"
    expired = "expired"
    missing_exp = "missing exp"
    wrong_iss = "wrong iss"
    wrong_aud = "wrong aud"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _encode_unsigned(header: dict, claims: dict, signature: str = "") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), signature])


def _mask(token: str | None) -> str:
    if not token:
        return "(none)"
    return f"{token[:6]}…({len(token)} chars)"


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def _token_of(who: TestUser | str | None) -> str | None:
    if isinstance(who, TestUser):
        return who.access_token
    return who or None


def _label_of(who: TestUser | str | None) -> str:
    return who.label if isinstance(who, TestUser) else "a raw token"


@dataclass
class Probe:
    label: str
    connection: ClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    consumed: int = 0
    closed_code: int | None = None
    closed_reason: str = ""

    def pull(self, deadline: float) -> dict[str, Any] | None:
        """The next frame that arrives before `deadline` (None on timeout or close)."""
        if self.closed_code is not None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            raw = self.connection.recv(timeout=remaining)
        except TimeoutError:
            return None
        except ConnectionClosed as closed:
            self.closed_code = closed.rcvd.code if closed.rcvd else 1006
            self.closed_reason = closed.rcvd.reason if closed.rcvd else "no close frame"
            return None
        try:
            frame = json.loads(raw)
        except ValueError:
            frame = {"type": "(not JSON)", "raw": _short(str(raw))}
        if not isinstance(frame, dict):
            frame = {"type": "(not an object)", "raw": _short(str(raw))}
        frame["_received_at"] = time.monotonic()
        self.received.append(frame)
        return frame

    def describe(self, frames: list[dict[str, Any]]) -> str:
        if not frames:
            got = "nothing"
        else:
            got = ", ".join(
                f"{f.get('type')}" + (f"({f.get('code')})" if f.get("code") else "")
                + (f"[{f.get('client_message_id')}]" if f.get("client_message_id") else "")
                for f in frames[-8:]
            )
        if self.closed_code is not None:
            got += f"; socket closed by server with code {self.closed_code} {self.closed_reason!r}"
        return got


@library(scope="SUITE", version="1.0", doc_format="ROBOT")
class CrosstalkSecurity:
    """Security probes over the agent WebSocket (OWASP WSTG-CLNT-10, API Security Top 10 API1/API2/API4).

    Tokens are never logged in full; users are `TestUser` objects from `CrosstalkAuth`
    (or raw token strings, for forged tokens).
    """

    def __init__(self):
        self._probes: dict[str, Probe] = {}

    # ------------------------------------------------------------ forged tokens
    @keyword
    def forge_access_token(
        self, kind: str, valid_token: TestUser | str, jwks_url: str, private_key: str | None = None,
    ) -> str:
        """Returns a broken copy of ``valid_token`` of the given ``kind`` (same ``sub``, fresh ``jti``).

        ``kind`` is one of: ``alg none``, ``alg None``, ``alg NONE``, ``signature stripped``,
        ``payload tampered``, ``hs256 signed with the public key``, ``kid pointing elsewhere``,
        ``expired``, ``missing exp``, ``wrong iss``, ``wrong aud``.

        The signature-based kinds need only the public JWKS. ``expired``, ``missing exp``,
        ``wrong iss`` and ``wrong aud`` must carry a *valid* signature to prove that the
        claim itself is checked, so they need the platform's signing key: ``private_key``
        is a path to its PEM file.

        The RS256→HS256 confusion token is built by hand: PyJWT refuses a PEM as HMAC secret.

        Example:
        | ${forged} = | Forge Access Token | alg none | ${alice} | ${AUTH_URL}/.well-known/jwks.json |
        | ${forged} = | Forge Access Token | expired | ${alice} | ${JWKS} | private_key=${KEY_PEM} |
        """
        kinds = {member.value: member for member in TokenKind}
        if kind not in kinds:
            raise AssertionError(f"Unknown token kind '{kind}': use one of {', '.join(kinds)}.")
        kind = kinds[kind]
        token = _token_of(valid_token)
        if not token or token.count(".") != 2:
            raise AssertionError("Forge Access Token needs a valid access token (a user who is logged in).")
        header_part, claims_part, signature = token.split(".")
        header, claims = json.loads(_unb64(header_part)), json.loads(_unb64(claims_part))
        claims = {**claims, "jti": uuid.uuid4().hex}
        if kind.name.startswith("alg_"):
            return _encode_unsigned({**header, "alg": kind.value.split()[1]}, claims)
        if kind is TokenKind.signature_stripped:
            return f"{header_part}.{claims_part}."
        if kind is TokenKind.payload_tampered:
            # Keep the original signature: another user's id in sub must break it.
            tampered = _b64(json.dumps({**claims, "sub": str(uuid.uuid4())}).encode())
            return f"{header_part}.{tampered}.{signature}"
        if kind is TokenKind.hs256_public_key:
            pem = self._public_pem(jwks_url, header.get("kid"))
            unsigned = _encode_unsigned({**header, "alg": "HS256"}, claims)[:-1]
            return unsigned + "." + _b64(hmac.new(pem, unsigned.encode(), hashlib.sha256).digest())
        if kind is TokenKind.kid_elsewhere:
            # Signed by a key we own, announced under a kid that points at our own URL.
            own_key = _throwaway_key()
            return jwt.encode(claims, own_key, algorithm="RS256",
                              headers={"kid": "../../attacker/jwks.json#k1", "jku": "http://127.0.0.1:9/jwks"})
        if not private_key:
            raise AssertionError(f"A '{kind.value}' token must be signed with the platform's own key to "
                                 f"prove the claim is checked: set JWT_PRIVATE_KEY to its PEM path.")
        with open(private_key, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        now = int(time.time())
        if kind is TokenKind.expired:
            claims.update(iat=now - 7200, exp=now - 3600)
        elif kind is TokenKind.missing_exp:
            claims.pop("exp", None)
        elif kind is TokenKind.wrong_iss:
            claims["iss"] = "https://attacker.example"
        elif kind is TokenKind.wrong_aud:
            claims["aud"] = "some-other-service"
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": header.get("kid")})

    @staticmethod
    def _public_pem(jwks_url: str, kid: str | None) -> bytes:
        try:
            keys = requests.get(jwks_url, timeout=10).json()["keys"]
        except (requests.RequestException, ValueError, KeyError) as error:
            raise AssertionError(f"Cannot read the JWKS at {jwks_url}: {error}") from None
        jwk = next((k for k in keys if k.get("kid") == kid), keys[0] if keys else None)
        if jwk is None:
            raise AssertionError(f"The JWKS at {jwks_url} has no keys.")
        public_key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
        return public_key.public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)

    # ------------------------------------------------------------ handshakes
    @keyword
    def websocket_handshake_should_be_refused(
        self, ws_url: str, token: TestUser | str | None = None, status: int = 401, origin: str | None = None,
        what: str = "", timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        """Fails unless the WebSocket handshake is refused with HTTP ``status`` (for 401 a close
        with code 4401 before any data also counts).

        ``token`` is a user (their current access token) or a raw token string; empty sends no
        ``Authorization`` header. ``origin`` sets the ``Origin`` header (``null`` is sent as is).
        ``what`` names the attempt in the failure message.

        Example:
        | Websocket Handshake Should Be Refused | ${WS_URL} | ${forged} | what=alg none token |
        | Websocket Handshake Should Be Refused | ${WS_URL} | ${token} | status=403 | origin=null |
        """
        what = what or f"token of {_label_of(token)}"
        headers = {"Authorization": f"Bearer {_token_of(token)}"} if _token_of(token) else {}
        logger.info(f"Handshake to {ws_url} with {what}: token {_mask(_token_of(token))}, Origin {origin!r}")
        try:
            connection = connect(ws_url, additional_headers=headers, origin=origin, open_timeout=_s(timeout),
                                 compression=None, max_size=None)
        except InvalidStatus as refused:
            got = refused.response.status_code
            if got != status:
                body = _short(refused.response.body.decode("utf-8", "replace"))
                raise AssertionError(f"WebSocket handshake with {what}: expected HTTP {status}, "
                                     f"got HTTP {got}: {body}") from None
            logger.info(f"Refused with HTTP {got}, as expected.")
            return
        except (InvalidHandshake, OSError, TimeoutError) as error:
            raise AssertionError(f"WebSocket handshake with {what} did not complete "
                                 f"({type(error).__name__}: {error}); expected HTTP {status}") from None
        probe = Probe(what, connection)
        try:
            first = probe.pull(time.monotonic() + 1.0)
            if status == 401 and first is None and probe.closed_code == 4401:
                logger.info("Accepted, then closed with 4401 before any data, as allowed.")
                return
            sent_origin = f"Origin {origin!r}" if origin else "no Origin"
            raise AssertionError(
                f"WebSocket handshake with {what} ({sent_origin}) was accepted (HTTP 101): expected HTTP "
                f"{status}; then received: {probe.describe(probe.received)}")
        finally:
            connection.close()

    @keyword
    def open_probe_socket(
        self, user: TestUser | str, ws_url: str, label: str | None = None, origin: str | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> str:
        """Opens a WebSocket for ``user`` (or a raw token) and keeps it as ``label``; returns the label.

        Fails with the HTTP status when the handshake is refused.

        Example:
        | ${probe} = | Open Probe Socket | ${alice} | ${WS_URL} |
        | Open Probe Socket | ${bob} | ${WS_URL} | label=bob-flood |
        """
        label = label or (user.label if isinstance(user, TestUser) else f"probe{len(self._probes) + 1}")
        token = _token_of(user)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            connection = connect(ws_url, additional_headers=headers, origin=origin, open_timeout=_s(timeout),
                                 compression=None, max_size=None)
        except InvalidStatus as refused:
            raise AssertionError(f"{label}: WebSocket handshake refused with HTTP "
                                 f"{refused.response.status_code}; expected it to be accepted") from None
        except (InvalidHandshake, OSError, TimeoutError) as error:
            raise AssertionError(f"{label}: could not open a WebSocket to {ws_url}: {error}") from None
        if label in self._probes:
            self._probes[label].connection.close()
        self._probes[label] = Probe(label, connection)
        return label

    # ------------------------------------------------------------ frames
    @keyword
    def send_probe_message(self, label: str, content: str, thread_id: str | None = None) -> str:
        """Sends a ``user_message`` on probe ``label``; returns its ``client_message_id``.

        Example:
        | ${cmid} = | Send Probe Message | alice | hello | thread_id=${bobs_thread} |
        """
        cmid = f"{label}-{uuid.uuid4().hex[:10]}"
        frame: dict[str, Any] = {"type": "user_message", "content": content, "client_message_id": cmid}
        if thread_id:
            frame["thread_id"] = thread_id
        self._send(label, json.dumps(frame))
        logger.info(f"{label} sent user_message {cmid}" + (f" into thread {thread_id}" if thread_id else "")
                    + f": {_short(content)!r}")
        return cmid

    @keyword
    def send_oversized_probe_message(self, label: str, size: int) -> str:
        """Sends a ``user_message`` whose frame is ``size`` bytes long; returns its ``client_message_id``.

        Example:
        | ${cmid} = | Send Oversized Probe Message | alice | 100000 |
        """
        cmid = f"{label}-big-{uuid.uuid4().hex[:8]}"
        skeleton = json.dumps({"type": "user_message", "content": "", "client_message_id": cmid})
        content = "A" * max(size - len(skeleton), 1)
        self._send(label, json.dumps({"type": "user_message", "content": content, "client_message_id": cmid}))
        logger.info(f"{label} sent a {size}-byte user_message {cmid}")
        return cmid

    def _send(self, label: str, text: str) -> None:
        probe = self._probe(label)
        try:
            probe.connection.send(text)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else 1006
            raise AssertionError(f"{label}: cannot send, the server closed the socket with code {code}") \
                from None

    @keyword
    def wait_for_probe_frame(
        self, label: str, type: str, client_message_id: str | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """Waits for a frame of ``type`` (for the given ``client_message_id``) on probe ``label``.

        Returns the frame. Frames received earlier but not yet waited for are searched first.
        Fails naming the user, the message and what arrived instead.

        Example:
        | ${error} = | Wait For Probe Frame | alice | error | ${cmid} |
        | Should Be Equal | ${error}[code] | thread_not_found |
        """
        probe = self._probe(label)
        deadline = time.monotonic() + _s(timeout)
        start = len(probe.received)
        frame = self._find(probe, type, client_message_id)
        while frame is None:
            if probe.pull(deadline) is None:
                raise AssertionError(
                    f"{label}: no '{type}' frame for message {client_message_id or '(any)'} within "
                    f"{_s(timeout):g} s; arrived instead: {probe.describe(probe.received[start:])}")
            frame = self._find(probe, type, client_message_id)
        return {k: v for k, v in frame.items() if not k.startswith("_")}

    @staticmethod
    def _find(probe: Probe, type_: str, cmid: str | None) -> dict[str, Any] | None:
        for index, frame in enumerate(probe.received):
            if frame.get("_used"):
                continue
            if frame.get("type") == type_ and (cmid is None or frame.get("client_message_id") == cmid):
                frame["_used"] = True
                probe.consumed = max(probe.consumed, index + 1)
                return frame
        return None

    @keyword
    def probe_run_should_complete(
        self, label: str, client_message_id: str, timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> str:
        """Waits until the run of ``client_message_id`` ends in ``agent_completed``; returns the answer.

        Fails at once on ``agent_error`` or an ``error`` frame for that message.

        Example:
        | ${answer} = | Probe Run Should Complete | alice | ${cmid} |
        """
        probe = self._probe(label)
        deadline = time.monotonic() + _s(timeout)
        seen = [f for f in probe.received if f.get("client_message_id") == client_message_id]
        index = len(probe.received)
        while True:
            for frame in seen:
                if frame.get("type") == "agent_completed":
                    return str((frame.get("payload") or {}).get("response", ""))
                if frame.get("type") in ("agent_error", "error"):
                    detail = frame.get("code") or (frame.get("payload") or {}).get("message")
                    raise AssertionError(f"{label}: run of message {client_message_id} ended in "
                                         f"{frame.get('type')} ({detail}) instead of agent_completed")
            if probe.pull(deadline) is None:
                raise AssertionError(
                    f"{label}: run of message {client_message_id} did not complete within {_s(timeout):g} s; "
                    f"its frames: {probe.describe(seen)}")
            seen += [f for f in probe.received[index:] if f.get("client_message_id") == client_message_id]
            index = len(probe.received)

    @keyword
    def probe_should_get_nothing_more_for(
        self, label: str, client_message_id: str, within: timedelta = timedelta(seconds=1),
    ) -> None:
        """Fails if any further frame about ``client_message_id`` arrives on ``label`` within ``within``.

        Use it after a refusal: a refused message must start no run.

        Example:
        | Probe Should Get Nothing More For | alice | ${cmid} | within=1s |
        """
        probe = self._probe(label)
        deadline = time.monotonic() + _s(within)
        index = len(probe.received)
        while probe.pull(deadline) is not None:
            pass
        late = [f for f in probe.received[index:] if f.get("client_message_id") == client_message_id]
        if late:
            raise AssertionError(f"{label}: message {client_message_id} was refused but then got: "
                                 f"{probe.describe(late)}")

    @keyword
    def probe_socket_should_be_closed_by_server(
        self, label: str, code: int = 4401, timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        """Fails unless the server closes probe ``label`` with ``code`` within ``timeout``.

        Example:
        | Probe Socket Should Be Closed By Server | alice | code=4401 | timeout=5s |
        """
        probe = self._probe(label)
        deadline = time.monotonic() + _s(timeout)
        start = len(probe.received)
        while probe.closed_code is None and time.monotonic() < deadline:
            probe.pull(deadline)
        if probe.closed_code != code:
            state = (f"closed with code {probe.closed_code} {probe.closed_reason!r}" if probe.closed_code
                     is not None else f"still open after {_s(timeout):g} s")
            raise AssertionError(f"{label}: expected the server to close the socket with code {code}, but it "
                                 f"is {state}; frames meanwhile: {probe.describe(probe.received[start:])}")

    @keyword
    def probe_socket_should_stay_usable(self, label: str, timeout: timedelta = DEFAULT_TIMEOUT) -> None:
        """Sends an ordinary message on ``label`` and fails unless its run completes.

        Example:
        | Probe Socket Should Stay Usable | alice |
        """
        cmid = self.send_probe_message(label, "still there?")
        self.probe_run_should_complete(label, cmid, timeout)

    @keyword
    def probe_message_should_be_refused(
        self, label: str, client_message_id: str, code: str, timeout: timedelta = DEFAULT_TIMEOUT,
        close_code: int | None = None,
    ) -> None:
        """Fails unless the server answers ``client_message_id`` with an ``error`` frame of ``code``
        (or, when ``close_code`` is given, closes the socket with it) and starts no run for it.

        Error frames about a frame the server could not parse carry no ``client_message_id``;
        they count too.

        Example:
        | Probe Message Should Be Refused | alice | ${cmid} | thread_not_found |
        | Probe Message Should Be Refused | alice | ${cmid} | frame_too_large | close_code=1009 |
        """
        probe = self._probe(label)
        deadline = time.monotonic() + _s(timeout)

        def mine() -> list[dict[str, Any]]:
            return [f for f in probe.received
                    if not f.get("_used") and f.get("client_message_id") in (client_message_id, None)]

        while True:
            refusal = next((f for f in mine() if f.get("type") == "error" and f.get("code") == code), None)
            if refusal is not None:
                break
            if close_code is not None and probe.closed_code == close_code:
                logger.info(f"{label}: socket closed with {close_code}, as allowed.")
                return
            run = [f for f in mine() if f.get("type", "").startswith("agent_") or f.get("type") == "error"]
            if run or probe.pull(deadline) is None:
                raise AssertionError(
                    f"{label}: message {client_message_id} should have been refused with {code}, but got: "
                    f"{probe.describe(run)}")
        refusal["_used"] = True
        logger.info(f"{label}: message {client_message_id} refused with {code}: {refusal.get('message')!r}")
        self.probe_should_get_nothing_more_for(label, client_message_id, timedelta(milliseconds=500))

    @keyword
    def close_probe_socket(self, label: str) -> None:
        """Closes probe ``label`` from the client side (normal closure 1000).

        Example:
        | Close Probe Socket | alice |
        """
        self._probes.pop(label, self._probe(label)).connection.close()

    @keyword
    def close_probe_sockets(self) -> None:
        """Closes every probe socket this suite opened.

        Example:
        | [Teardown] | Close Probe Sockets |
        """
        for probe in self._probes.values():
            probe.connection.close()
        self._probes.clear()

    # ------------------------------------------------------------ API4
    @keyword
    def flood_while_others_chat(
        self, flooder: str, others: list[str], count: int = 100, timeout: timedelta = timedelta(seconds=30),
    ) -> dict[str, Any]:
        """Sends ``count`` messages from probe ``flooder`` as fast as possible while each probe in
        ``others`` sends one message; returns ``rate_limited`` (the number of refusals the flooder
        got) and ``latencies`` (others' send-to-``agent_completed`` seconds, by label).

        Fails when another user's run does not complete: a flood must never take others down.

        Example:
        | ${flood} = | Flood While Others Chat | mallory | ${{["alice", "bob"]}} | count=100 |
        | Should Be True | ${flood}[rate_limited] > 0 |
        """
        def chat(label: str) -> float:
            started = time.monotonic()
            cmid = self.send_probe_message(label, "a quiet question while someone floods")
            self.probe_run_should_complete(label, cmid, timeout)
            return time.monotonic() - started

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(others) or 1) as pool:
            futures = {label: pool.submit(chat, label) for label in others}
            for number in range(count):
                self._send(flooder, json.dumps({"type": "user_message", "content": f"flood {number}",
                                                "client_message_id": f"{flooder}-flood-{number}"}))
            latencies = {label: future.result() for label, future in futures.items()}
        probe = self._probe(flooder)
        deadline = time.monotonic() + 3
        while probe.pull(deadline) is not None:  # collect the answers to the flood
            pass
        refused = sum(f.get("type") == "error" and f.get("code") == "rate_limited" for f in probe.received)
        logger.info(f"{flooder} sent {count} messages: {refused} refused with rate_limited. Others' latency: "
                    + ", ".join(f"{label} {seconds:.3f} s" for label, seconds in latencies.items())
                    + (f" (median {statistics.median(latencies.values()):.3f} s)" if latencies else ""))
        return {"rate_limited": refused, "latencies": latencies}

    # ------------------------------------------------------------ sessions and server resources
    @keyword
    def session_records_should_number(
        self, redis_url: str, user_id: str, count: int, timeout: timedelta = timedelta(seconds=5),
    ) -> None:
        """Waits until Redis holds exactly ``count`` session records (``session:<user_id>:*``) for the user.

        ``count=0`` after the user's sockets closed proves sessions are removed on disconnect.

        Example:
        | Session Records Should Number | ${REDIS_URL} | ${user_id} | 3 |
        | Session Records Should Number | ${REDIS_URL} | ${user_id} | 0 | timeout=5s |
        """
        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        pattern = f"session:{user_id}:*"
        deadline = time.monotonic() + _s(timeout)
        try:
            while True:
                keys = sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))
                if len(keys) == count:
                    logger.info(f"{len(keys)} session record(s) match {pattern}, as expected.")
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"Redis holds {len(keys)} session record(s) for user {user_id} after "
                        f"{_s(timeout):g} s, expected {count}: {', '.join(keys[:5]) or 'none'}"
                        + (" — sessions are not removed when their socket closes" if count == 0 else ""))
                time.sleep(0.1)
        finally:
            client.close()

    @keyword
    def get_leaked_connection_count(self, backend_url: str) -> int:
        """Returns ``tracked_connections - active_websockets`` from the backend's ``/metrics``:
        connection entries the server still holds for sockets that are already closed.

        Example:
        | ${before} = | Get Leaked Connection Count | ${BACKEND_URL} |
        """
        try:
            metrics = requests.get(f"{backend_url}/metrics", timeout=10).json()
            return int(metrics["tracked_connections"]) - int(metrics["active_websockets"])
        except (requests.RequestException, ValueError, KeyError) as error:
            raise AssertionError(f"Cannot read tracked_connections and active_websockets from "
                                 f"{backend_url}/metrics: {error}") from None

    @keyword
    def closed_connections_should_be_released(
        self, backend_url: str, before: int, closed: int, timeout: timedelta = timedelta(seconds=5),
    ) -> None:
        """Waits until the server holds fewer than ``before + closed`` entries for closed sockets.

        Other users' sockets may be opening and closing meanwhile (pabot), so the check allows
        for those in flight but not for all ``closed`` of ours staying behind.

        Example:
        | Closed Connections Should Be Released | ${BACKEND_URL} | ${before} | closed=10 |
        """
        deadline = time.monotonic() + _s(timeout)
        while True:
            leaked = self.get_leaked_connection_count(backend_url)
            if leaked < before + closed:
                logger.info(f"{leaked} entries for closed sockets on the server (was {before}): released.")
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{closed} closed sockets are still held by the server after {_s(timeout):g} s: "
                    f"tracked_connections - active_websockets = {leaked} (was {before} before they opened)")
            time.sleep(0.1)

    def _probe(self, label: str) -> Probe:
        if label not in self._probes:
            raise AssertionError(f"No probe socket '{label}': open it first with 'Open Probe Socket' "
                                 f"(open: {', '.join(self._probes) or 'none'}).")
        return self._probes[label]


_THROWAWAY: list = []


def _throwaway_key():
    if not _THROWAWAY:
        from cryptography.hazmat.primitives.asymmetric import rsa

        _THROWAWAY.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _THROWAWAY[0]


def _s(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
