"""Robot Framework library: the checks that catch bugs nobody planted on purpose.

Identity taken from the request instead of the token, credentials read from a
second channel, login answers that tell which emails exist, stored truth that
differs from streamed truth, deletes that are not deletes everywhere, counters
that lose writes between different writers, and cost that grows with other
users' data.  The logic lives in ``crosstalk.integrity``; this file turns it into
keywords with one-line failure messages naming user, run and what was found.
"""

from __future__ import annotations

import random
import secrets
import statistics
import time
import urllib.parse
import uuid
from datetime import timedelta
from typing import Any

import requests
from crosstalk import context, races
from crosstalk import profile as target_profile
from crosstalk.connection import RunHandle as RunHandleLike
from crosstalk.connection import exchange, open_blocking, start_thread
from crosstalk.errors import CrosstalkError
from crosstalk.httpretry import HTTP_TIMEOUT
from crosstalk.integrity import (
    IDENTITY_FIELDS,
    Channel,
    StreamedRun,
    channels_for,
    compare_timings,
    raw_request,
    reconcile_rest,
    reconcile_rows,
    reconcile_stream,
    runs_from_frames,
    side_channels,
)
from crosstalk.model import TestUser
from crosstalk.registry import Cleanup
from crosstalk.rest import Backend, bearer, json_or_text, service_url, warm_sessions
from crosstalk.secrets import mask, mask_url
from crosstalk.stores import connect_redis, fetch
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library

# the rows a thread owns: one table per kind, named <kind>s (threads, messages, runs)
THREAD_ROW_KINDS = ("thread", "message", "run")


class IntegrityError(CrosstalkError):
    """A check of this library failed; the message names who, what and where."""


def _s(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _database_url() -> str:
    return context.current().get("BACKEND_DATABASE_URL")


def _ws() -> str:
    return service_url("WS_URL")


def _throwaway_password() -> str:
    return f"{secrets.token_urlsafe(18)}-A1!"


def _frames_of(run: RunHandleLike) -> list[dict[str, Any]]:
    """The frames of a run until it ended: its events, or the ``error`` frame that refused it."""
    return [*run.events, *([run.rejection] if run.rejection else [])]


@library(scope="SUITE", version=VERSION, auto_keywords=False, doc_format="ROBOT", listener=Cleanup())
class CrosstalkIntegrity:
    """Identity, credential channels, account enumeration, the persistence oracle, multi-writer
    counters and cost growth.

    The target comes from ``${AUTH_URL}``, ``${BACKEND_URL}``, ``${WS_URL}`` and, for the row and
    key checks, ``${BACKEND_DATABASE_URL}`` and ``${REDIS_URL}``.  Users are `TestUser` objects
    from CrosstalkAuth; runs are run handles from CrosstalkChat.
    """

    def __init__(self) -> None:
        self._backend = Backend()

    @staticmethod
    def _rows_available() -> bool:
        return bool(_database_url())

    def _get(self, user: TestUser, path: str) -> requests.Response:
        return self._backend.request("GET", user, path)

    @staticmethod
    def _thread_rows(select: str, thread: str) -> list[tuple]:
        """``select`` (``{kind}`` filled in) over the thread, message and run rows of ``thread``."""
        sql = " UNION ALL ".join(select.format(kind=kind) for kind in THREAD_ROW_KINDS)
        return fetch("backend", _database_url(), sql, (thread,) * len(THREAD_ROW_KINDS))

    def _thread_ids(self, user: TestUser) -> list[str]:
        return [t["thread_id"] for t in self._backend.get_json(user, "/threads")]

    @staticmethod
    def _chat(user: TestUser, frame: dict[str, Any], timeout: float = 20.0) -> list[dict[str, Any]]:
        """Send one client frame on a fresh socket of ``user``; the frames of its run until it ends."""
        socket = open_blocking(user, f"{user.label}#integrity", service_url("WS_URL"), HTTP_TIMEOUT)
        try:
            return _frames_of(exchange(socket, frame, timeout))
        finally:
            socket.close_blocking()

    # ------------------------------------------------------------------ identity (point 1)
    @keyword
    def identity_fields_in_frames_should_have_no_effect(self, user: TestUser, victim: TestUser) -> None:
        """Sends ``user_message`` frames carrying every identity field (``user_id``, ``owner``,
        ``sub``, ``owner_id``, ``author_id`` …) set to ``victim``: as a new thread, into ``user``'s
        own thread, and into ``victim``'s thread.  Every event must name ``user``; what was stored
        must belong to ``user`` over REST (and in the rows when ``${BACKEND_DATABASE_URL}`` is set);
        ``victim`` must see none of it; the frame into ``victim``'s thread must be refused.

        Example:
        | Identity Fields In Frames Should Have No Effect | ${alice} | ${bob} |
        """
        victim_thread = start_thread(victim, _ws(), f"victim's own {victim.canary}", 20.0)
        claims = {name: victim.user_id for name in IDENTITY_FIELDS} | {"email": victim.email}
        problems: list[str] = []
        own_thread = None
        for case in ("new thread", "own thread", "victim's thread"):
            cmid = f"identity-{uuid.uuid4().hex[:10]}"
            frame = {
                "type": "user_message",
                "content": f"{user.canary} {case} as {victim.label}?",
                "client_message_id": cmid,
                **claims,
            }
            if case == "own thread":
                frame["thread_id"] = own_thread
            elif case == "victim's thread":
                frame["thread_id"] = victim_thread
            frames = self._chat(user, frame)
            last = frames[-1]
            logger.info(
                f"{case}: {user.label}'s frame with {victim.label}'s identity fields -> "
                f"{[f.get('type') for f in frames]}"
            )
            foreign = [f for f in frames if f.get("user_id") not in (None, user.user_id)]
            if foreign:
                problems.append(
                    f"{case}: events name user {foreign[0].get('user_id')} instead of {user.label}"
                )
            if case == "victim's thread":
                if last.get("type") != "error" or last.get("code") != "thread_not_found":
                    problems.append(
                        f"a frame into {victim.label}'s thread with {victim.label}'s identity fields "
                        f"was not refused with thread_not_found: it ended {last.get('type')}"
                    )
                continue
            if last.get("type") != "agent_completed":
                problems.append(f"{case}: the run ended {last.get('type')} {last.get('code', '')}")
                continue
            thread = last["thread_id"]
            own_thread = own_thread or thread
            problems += self._owned_only_by(user, victim, thread, f"{case} frame", run_id=last.get("run_id"))
        victims_messages = self._backend.get_json(victim, f"/threads/{victim_thread}/messages")
        if any(user.canary in m.get("content", "") for m in victims_messages):
            problems.append(f"{user.label}'s message landed in {victim.label}'s thread")
        if problems:
            raise IntegrityError(f"identity taken from the request, not the token: {'; '.join(problems)}")

    def _owned_only_by(
        self, user: TestUser, victim: TestUser, thread: str, what: str, run_id: str | None = None
    ) -> list[str]:
        problems = []
        if self._get(user, f"/threads/{thread}").status_code != 200:
            problems.append(f"{what}: {user.label} cannot read thread {thread} it just wrote")
        if self._get(victim, f"/threads/{thread}").status_code != 404:
            problems.append(f"{what}: {victim.label} can read {user.label}'s thread {thread}")
        if thread in self._thread_ids(victim):
            problems.append(f"{what}: thread {thread} is in {victim.label}'s thread list")
        if self._rows_available():
            owners = self._thread_rows("SELECT '{kind}', user_id::text FROM {kind}s WHERE thread_id = %s",
                                       thread)
            wrong = sorted({kind for kind, owner in owners if owner != user.user_id})
            if wrong:
                problems.append(f"{what}: {', '.join(wrong)} rows of thread {thread} belong to another user")
        return problems

    @keyword
    def identity_fields_in_bodies_should_have_no_effect(self, user: TestUser, victim: TestUser) -> None:
        """Every write endpoint gets its contract fields plus every identity field set to ``victim``:
        a note (``POST /threads/{id}/messages``), a workspace (``POST /workspaces``), a refresh, a
        login, a registration and a logout (which must revoke the caller's token, not the victim's).
        Each must act for the token's (or credentials') user only.

        Example:
        | Identity Fields In Bodies Should Have No Effect | ${alice} | ${bob} |
        """
        claims = {name: victim.user_id for name in IDENTITY_FIELDS}
        headers = bearer(user.access_token)
        problems: list[str] = []
        thread = start_thread(user, _ws(), f"notes of {user.canary}", 20.0)
        note = requests.post(
            f"{self._backend.url}/threads/{thread}/messages",
            json={"content": f"note {user.canary}", **claims},
            headers=headers,
            timeout=HTTP_TIMEOUT,
        )
        if note.status_code != 201:
            problems.append(f"a note with identity fields answered {note.status_code}: {json_or_text(note)}")
        problems += self._owned_only_by(user, victim, thread, "note")
        name = f"workspace {uuid.uuid4().hex[:8]}"
        created = requests.post(
            f"{self._backend.url}/workspaces",
            json={"name": name, **claims},
            headers=headers,
            timeout=HTTP_TIMEOUT,
        )
        if created.status_code != 201:
            problems.append(
                f"a workspace with identity fields answered {created.status_code}: {json_or_text(created)}"
            )
        mine = [w["name"] for w in self._backend.get_json(user, "/workspaces")]
        theirs = [w["name"] for w in self._backend.get_json(victim, "/workspaces")]
        if name in theirs:
            problems.append(
                f"the workspace {user.label} created with owner fields is listed for {victim.label}"
            )
        if name not in mine:
            problems.append(f"the workspace {user.label} created is not in {user.label}'s own list")
        if self._rows_available():
            owners = fetch(
                "backend", _database_url(),
                "SELECT user_id::text FROM workspaces WHERE name = %s",
                (name,),
            )
            if any(owner != user.user_id for (owner,) in owners):
                problems.append(f"the workspace row {name!r} belongs to another user")
        problems += self._auth_bodies_ignore_identity(user, victim, claims)
        if problems:
            raise IntegrityError(
                f"identity taken from the request body, not the token: {'; '.join(problems)}"
            )

    def _auth_bodies_ignore_identity(self, user: TestUser, victim: TestUser, claims: dict) -> list[str]:
        import jwt  # PyJWT: only reading claims of tokens the platform just issued

        problems = []
        auth = service_url("AUTH_URL")
        login = requests.post(
            f"{auth}/auth/login",
            json={"email": user.email, "password": user.password, **claims},
            timeout=HTTP_TIMEOUT,
        )
        if login.status_code != 200:
            return [f"login with identity fields answered {login.status_code}: {json_or_text(login)}"]
        pair = login.json()
        refreshed = requests.post(
            f"{auth}/auth/refresh",
            json={"refresh_token": pair["refresh_token"], **claims},
            timeout=HTTP_TIMEOUT,
        )
        for what, reply in (("login", login), ("refresh", refreshed)):
            if reply.status_code != 200:
                problems.append(f"{what} with identity fields answered {reply.status_code}")
                continue
            sub = jwt.decode(reply.json()["access_token"], options={"verify_signature": False}).get("sub")
            if sub != user.user_id:
                problems.append(f"{what} with {victim.label}'s identity fields issued a token for {sub}")
        email = f"identity-{uuid.uuid4().hex[:10]}@integrity.example.test"
        registered = requests.post(
            f"{auth}/auth/register",
            json={"email": email, "password": _throwaway_password(), **claims},
            timeout=HTTP_TIMEOUT,
        )
        if registered.status_code != 201 or json_or_text(registered).get("user_id") == victim.user_id:
            problems.append(
                f"registering with {victim.label}'s user_id answered {registered.status_code}: "
                f"{json_or_text(registered)}"
            )
        if refreshed.status_code == 200:  # log out the refreshed session, naming the victim in the body
            spare = refreshed.json()["access_token"]
            requests.post(f"{auth}/auth/logout", json=claims, headers=bearer(spare),
                          timeout=HTTP_TIMEOUT)
            victim_me = requests.get(f"{auth}/auth/me", headers=bearer(victim.access_token),
                                     timeout=HTTP_TIMEOUT)
            spare_me = requests.get(f"{auth}/auth/me", headers=bearer(spare), timeout=HTTP_TIMEOUT)
            if victim_me.status_code != 200 or spare_me.status_code != 401:
                problems.append(f"a logout with {victim.label}'s identity fields left {user.label}'s token "
                                f"answering {spare_me.status_code}, {victim.label}'s {victim_me.status_code}")
        return problems

    # ------------------------------------------------------------------ credential channels (point 2)
    def _probe(self, channel: Channel, where: str) -> int:
        """HTTP status of ``where`` (``rest-backend``, ``rest-auth`` or ``handshake``) with ``channel``."""
        if where == "handshake":
            parts = urllib.parse.urlsplit(_ws())
            base, path, upgrade = f"http://{parts.netloc}", parts.path or "/ws", True
        elif where == "rest-auth":
            base, path, upgrade = service_url("AUTH_URL"), "/auth/me", False
        else:
            base, path, upgrade = self._backend.url, "/threads", False
        target = f"{path}?{channel.query}" if channel.query else path
        return raw_request(base, target, channel.headers, timeout=HTTP_TIMEOUT, upgrade=upgrade).status

    @keyword
    def only_the_authorization_header_should_carry_credentials(self, user: TestUser) -> None:
        """``user``'s valid token works in one ``Authorization: Bearer`` header (REST 200, handshake
        101) and nowhere else: in the query string (``?access_token=``, ``?token=``), a cookie,
        ``Sec-WebSocket-Protocol``, ``X-Access-Token`` or next to a second ``Authorization`` header
        it must be refused with 401 on REST and on the WebSocket handshake.

        Example:
        | Only The Authorization Header Should Carry Credentials | ${alice} |
        """
        token = user.access_token
        contract = Channel("Authorization: Bearer", (("Authorization", f"Bearer {token}"),))
        for where, expected in (("rest-backend", 200), ("rest-auth", 200), ("handshake", 101)):
            got = self._probe(contract, where)
            if got != expected:
                raise IntegrityError(
                    f"positive control failed: {where} with {user.label}'s valid token in the "
                    f"Authorization header answered {got}, expected {expected}"
                )
        forged = "x" + token[1:]  # a broken token next to the valid one
        duplicated = [c for c in channels_for(forged, genuine=token) if c.name.startswith("duplicated")]
        accepted = []
        for channel in [*side_channels(token), *duplicated]:
            for where in ("rest-backend", "rest-auth", "handshake"):
                status = self._probe(channel, where)
                if status in (200, 101):
                    accepted.append(f"{where} via {channel.name} answered {status}")
        logger.info(
            f"{len(side_channels(token)) + len(duplicated)} channels x 3 endpoints probed with "
            f"{user.label}'s token {mask(token)}"
        )
        if accepted:
            raise IntegrityError(
                f"a credential outside the one Authorization header was accepted "
                f"({len(accepted)}): {'; '.join(accepted[:6])}"
            )

    @keyword
    def bad_tokens_should_fail_in_every_channel(self, **tokens: str) -> None:
        """Each named token (forged, expired, revoked …) is refused in every channel a server might read
        it from — the Authorization header with any case of the scheme, without a scheme, the query
        string, cookies, ``Sec-WebSocket-Protocol`` and custom headers — on REST and on the handshake.

        Example:
        | Bad Tokens Should Fail In Every Channel | alg_none=${forged} | revoked=${revoked} |
        """
        if not tokens:
            raise ValueError("name at least one token, e.g. revoked=${token}")
        accepted = []
        for kind, token in tokens.items():
            for channel in channels_for(token):
                for where in ("rest-backend", "rest-auth", "handshake"):
                    status = self._probe(channel, where)
                    if status in (200, 101):
                        accepted.append(f"the {kind} token via {channel.name} on {where} answered {status}")
        logger.info(f"{', '.join(tokens)} tokens probed in {len(channels_for('t'))} channels x 3 endpoints")
        if accepted:
            raise IntegrityError(f"{len(accepted)} bad-token attempt(s) accepted: {'; '.join(accepted[:6])}")

    # ------------------------------------------------------------------ enumeration (point 3)
    @keyword
    def login_should_not_reveal_which_emails_exist(
        self,
        user: TestUser,
        tries: int = 40,
        alpha: float = 0.001,
        min_difference: timedelta = timedelta(milliseconds=5),
    ) -> None:
        """Login with an unknown email and with ``user``'s email but a wrong password must answer with the
        same status and byte-identical body, and their timings must not be usefully different.

        Timing: ``tries`` attempts of each kind, in random interleaved order on one keep-alive connection,
        compared by a two-sided Mann–Whitney U test.  The check fails only when p < ``alpha`` *and* the
        medians differ by more than ``min_difference``.  If both paths take the same time, a run fails
        by chance with probability at most ``alpha`` (0.1 % by default): that is its false-alarm rate.

        Example:
        | Login Should Not Reveal Which Emails Exist | ${alice} | tries=40 | alpha=0.001 |
        """
        url = f"{service_url('AUTH_URL')}/auth/login"
        wrong = {"email": user.email, "password": "wrong-" + uuid.uuid4().hex}
        samples: dict[str, list[float]] = {"unknown email": [], "wrong password": []}
        bodies: dict[str, set[tuple[int, bytes, str]]] = {"unknown email": set(), "wrong password": set()}
        order = ["unknown email", "wrong password"] * int(tries)
        random.Random(tries).shuffle(order)
        with requests.Session() as session:
            for kind in ["unknown email", "wrong password"] * 3 + order:  # 3 warm-ups of each first
                body = (
                    wrong
                    if kind == "wrong password"
                    else {
                        "email": f"nobody-{uuid.uuid4().hex[:12]}@integrity.example.test",
                        "password": wrong["password"],
                    }
                )
                started = time.perf_counter()
                reply = session.post(url, json=body, timeout=HTTP_TIMEOUT)
                elapsed = time.perf_counter() - started
                bodies[kind].add((reply.status_code, reply.content, reply.headers.get("content-type", "")))
                samples[kind].append(elapsed)
        answers = {kind: sorted(found) for kind, found in bodies.items()}
        if len(answers["unknown email"]) != 1 or answers["unknown email"] != answers["wrong password"]:
            raise IntegrityError(
                f"login answers tell which emails exist: unknown email -> "
                f"{answers['unknown email'][:2]}, wrong password -> {answers['wrong password'][:2]}"
            )
        status = answers["unknown email"][0][0]
        if status != 401:
            raise IntegrityError(f"login with a wrong password answered {status}, expected 401")
        unknown, known = samples["unknown email"][3:], samples["wrong password"][3:]
        verdict = compare_timings(unknown, known, alpha, _s(min_difference))
        logger.info(
            f"Login timing, {user.label}'s email with a wrong password vs unknown emails: "
            f"{verdict.describe('unknown email', 'wrong password')}"
        )
        if verdict.distinguishable:
            raise IntegrityError(
                f"login timing tells which emails exist: "
                f"{verdict.describe('unknown email', 'wrong password')}"
            )

    # ------------------------------------------------------------------ persistence oracle (point 4)
    @staticmethod
    def _collect(what: Any) -> tuple[list[StreamedRun], dict[str, TestUser]]:
        """Runs and their users from run handles, users (their recorded frames) or a load run."""
        if isinstance(what, (list, tuple)):
            items = list(what)
        elif isinstance(what, (TestUser, RunHandleLike)):
            items = [what]
        elif hasattr(what, "users"):  # a load run
            items = list(what.users)
        else:
            raise ValueError(f"give run handles, users or a load run, not {type(what).__name__}")
        runs: list[StreamedRun] = []
        users: dict[str, TestUser] = {}
        for item in items:
            if isinstance(item, TestUser):
                users[item.label] = item
                found = runs_from_frames(item.label, str(item.user_id), item.frames)
                if not found:
                    raise IntegrityError(f"no ended run is recorded for {item.label} (frames not kept?): "
                                         "the persistence oracle has nothing to reconcile; pass run handles")
                runs += found
            elif getattr(item, "rejection", None) is None:
                users[item.user.label] = item.user
                runs.append(CrosstalkIntegrity._streamed(item))
        return runs, users

    @staticmethod
    def _streamed(run: Any) -> StreamedRun:
        if isinstance(run, StreamedRun):
            return run
        return StreamedRun(
            run.user.label,
            run.user.user_id,
            run.run_id,
            run.thread_id,
            run.client_message_id,
            run.content,
            list(run.events),
        )

    @keyword
    def what_was_streamed_should_be_what_was_stored(
        self, runs: Any, settle: timedelta = timedelta(milliseconds=300)
    ) -> None:
        """The persistence oracle: for each ended run, what the user saw on the socket is what the platform
        stored.  Exactly one terminal event per run; over REST (always) the run's question and answer are
        in the run's own thread with its ``client_message_id`` and ``run_id``, and ``message_count`` equals
        the messages listed; in the rows (when ``${BACKEND_DATABASE_URL}`` is set) the same, plus
        ``runs.status`` equals the terminal event and the thread belongs to the user.  Rejected runs
        (an ``error`` frame) are skipped: nothing was stored for them.

        ``runs`` is a list of run handles (CrosstalkChat), a user or a list of users (every run rebuilt
        from the frames recorded on them) or a load run (its users).

        ``settle`` waits for late frames first, so a second terminal event is seen.

        Example:
        | What Was Streamed Should Be What Was Stored | ${runs} |
        | What Was Streamed Should Be What Was Stored | ${users} |
        """
        time.sleep(_s(settle))
        streamed, by_label = self._collect(runs)
        problems: list[str] = []
        threads: dict[tuple[str, str], tuple[list, int | None]] = {}
        for run in streamed:
            found = reconcile_stream(run)
            problems += found
            if found and not run.thread_id:
                continue
            key = (run.user, run.thread_id)
            if key not in threads:
                user = by_label[run.user]
                messages = self._backend.get_json(user, f"/threads/{run.thread_id}/messages")
                info = self._backend.get_json(user, f"/threads/{run.thread_id}")
                threads[key] = (messages, info.get("message_count"))
            counts = target_profile.current().message_count.value
            problems += reconcile_rest(run, *threads[key], counts=counts)
        checked_rows = self._rows_available()
        if checked_rows:
            problems += self._reconcile_rows(streamed)
        where = "REST and rows" if checked_rows else "REST (rows not checked: no BACKEND_DATABASE_URL)"
        logger.info(f"{len(streamed)} runs in {len(threads)} threads reconciled with {where}")
        if problems:
            unique = list(dict.fromkeys(problems))
            raise IntegrityError(
                f"stored truth differs from streamed truth ({len(unique)} problems): {'; '.join(unique[:6])}"
            )

    def _reconcile_rows(self, runs: list[StreamedRun]) -> list[str]:
        started = [run for run in runs if run.run_id and run.thread_id]
        if not started:
            return []
        url = _database_url()
        run_ids = [run.run_id for run in started]
        thread_ids = sorted({run.thread_id for run in started})
        messages: dict[str, list[tuple]] = {}
        for run_id, *row in fetch(
            "backend", url,
            "SELECT run_id::text, thread_id::text, user_id::text, role, client_message_id FROM messages "
            "WHERE run_id = ANY(%s::uuid[])",
            (run_ids,),
        ):
            messages.setdefault(run_id, []).append(tuple(row))
        run_rows = {
            r[0]: r[1:]
            for r in fetch(
                "backend", url,
                "SELECT run_id::text, thread_id::text, user_id::text, status FROM runs "
                "WHERE run_id = ANY(%s::uuid[])",
                (run_ids,),
            )
        }
        thread_rows = {
            r[0]: r[1:]
            for r in fetch(
                "backend", url,
                "SELECT t.thread_id::text, t.user_id::text, t.message_count, "
                "(SELECT count(*) FROM messages m WHERE m.thread_id = t.thread_id) FROM threads t "
                "WHERE t.thread_id = ANY(%s::uuid[])",
                (thread_ids,),
            )
        }
        problems = []
        for run in started:
            thread = thread_rows.get(run.thread_id)
            problems += reconcile_rows(
                run,
                messages.get(run.run_id, []),
                run_rows.get(run.run_id),
                thread[:2] if thread else None,
                thread[2] if thread else 0,
            )
        return problems

    @keyword
    def deleted_thread_should_be_gone_from_every_view(self, user: TestUser, thread: str) -> None:
        """Deletes ``thread`` after ``user``'s thread list was read (so a cache holds it), then at once:
        ``GET /threads/{id}`` and its messages answer 404 and ``GET /threads`` (read twice, cached or
        not) no longer lists it; with ``${BACKEND_DATABASE_URL}`` no thread, message or run row of it
        remains, with ``${REDIS_URL}`` no agent context key.

        Example:
        | Deleted Thread Should Be Gone From Every View | ${alice} | ${thread} |
        """
        for _ in range(2):  # the second read is served from the cache, if there is one
            if thread not in self._thread_ids(user):
                raise IntegrityError(
                    f"precondition: thread {thread} is not in {user.label}'s list before the delete"
                )
        reply = requests.delete(
            f"{self._backend.url}/threads/{thread}",
            headers=bearer(user.access_token),
            timeout=HTTP_TIMEOUT,
        )
        if reply.status_code != 204:
            raise IntegrityError(f"DELETE /threads/{thread} as {user.label} answered {reply.status_code}")
        views = []
        for path in (f"/threads/{thread}", f"/threads/{thread}/messages"):
            status = self._get(user, path).status_code
            if status != 404:
                views.append(f"GET {path} answered {status}")
        for attempt in (1, 2):
            if thread in self._thread_ids(user):
                views.append(f"GET /threads (read {attempt}) still lists it")
        if self._rows_available():
            rows = self._thread_rows("SELECT '{kind}s', count(*) FROM {kind}s WHERE thread_id = %s", thread)
            views += [f"{count} {table} row(s) remain" for table, count in rows if count]
        if context.current().get("REDIS_URL"):
            client = connect_redis("redis", context.current().get("REDIS_URL"))
            try:
                if client.exists(target_profile.current().context_key(user.user_id, thread)):
                    views.append("its agent context key remains in Redis")
            finally:
                client.close()
        if views:
            raise IntegrityError(
                f"deleted thread {thread} of {user.label} is not gone from every view: {'; '.join(views)}"
            )
        logger.info(f"Thread {thread} is gone from get, messages, the list (twice) and the stores.")

    # ------------------------------------------------------------------ multi-writer counters (point 5)
    @keyword
    def different_writers_at_once_should_keep_the_counter_exact(
        self,
        user: TestUser,
        notes: int = 20,
        runs: int = 4,
        deletes: int = 3,
        slow_step: timedelta = timedelta(milliseconds=30),
    ) -> None:
        """Three kinds of writers on one user at the same moment: ``notes`` REST notes and ``runs`` agent
        runs (each step ``slow_step`` long) into one thread, while ``deletes`` other threads of the user
        are deleted.  Afterwards the thread's ``message_count`` equals its stored messages and the
        expected number, and the deleted threads are gone.

        Example:
        | Different Writers At Once Should Keep The Counter Exact | ${alice} | notes=20 | runs=4 | deletes=3 |
        """
        thread = start_thread(user, _ws(), f"shared counter {user.canary}", 20.0)
        doomed = [start_thread(user, _ws(), f"to delete {n}", 20.0) for n in range(int(deletes))]
        before = self._backend.get_json(user, f"/threads/{thread}")["message_count"]
        sockets = [open_blocking(user, f"{user.label}#writer{n + 1}", _ws(), HTTP_TIMEOUT)
                   for n in range(int(runs))]
        sessions = warm_sessions(int(notes) + int(deletes), self._backend.url)
        slow = int(_s(slow_step) * 1000)
        ended: dict[int, list] = {}

        def act(index: int, actor: str) -> Any:
            headers = bearer(user.access_token)
            if index < runs:
                frame = {
                    "type": "user_message",
                    "content": f"run {index} [[slow:{slow}]]",
                    "client_message_id": f"writer-{index}-{uuid.uuid4().hex[:6]}",
                    "thread_id": thread,
                }
                ended[index] = _frames_of(exchange(sockets[index], frame, 30.0))
                return ended[index][-1].get("type")
            session = sessions[index - runs]
            if index < runs + notes:
                return session.post(
                    f"{self._backend.url}/threads/{thread}/messages",
                    json={"content": f"note {index}"},
                    headers=headers,
                    timeout=HTTP_TIMEOUT,
                )
            return session.delete(
                f"{self._backend.url}/threads/{doomed[index - runs - notes]}",
                headers=headers,
                timeout=HTTP_TIMEOUT,
            )

        total = int(runs) + int(notes) + int(deletes)
        kinds = ["run"] * int(runs) + ["note"] * int(notes) + ["delete"] * int(deletes)
        try:
            outcomes = races.fire_at_once([f"{user.label}/{k}{i}" for i, k in enumerate(kinds)], act, 60.0)
        finally:
            for socket in sockets:
                socket.close_blocking()
            for session in sessions:
                session.close()
        wanted = {"note": 201, "delete": 204, "run": "agent_completed"}
        failed = [
            str(o) for o, kind in zip(outcomes, kinds, strict=True) if not o.ok or o.status != wanted[kind]
        ]
        bad_runs = [i for i, frames in ended.items() if frames[-1].get("type") != "agent_completed"]
        if failed or bad_runs or len(outcomes) != total:
            raise IntegrityError(
                f"{len(failed)} of {total} concurrent writes failed ({'; '.join(failed[:3])}); "
                f"runs not completed: {bad_runs}"
            )
        profile = target_profile.current()  # what message_count counts: all or the user's messages
        expected = before + profile.expected_message_count(int(notes) + int(runs), int(runs))
        counter = self._backend.get_json(user, f"/threads/{thread}")["message_count"]
        stored = self._backend.get_json(user, f"/threads/{thread}/messages")
        rows = len([m for m in stored if profile.message_count.value == "all" or m.get("role") == "user"])
        logger.info(
            f"thread {thread}: message_count {counter}, {rows} messages, expected {expected} "
            f"({notes} notes + {runs} runs x 2 + {before} before, {deletes} deletes alongside)"
        )
        survivors = [t for t in doomed if self._get(user, f"/threads/{t}").status_code != 404]
        if survivors:
            raise IntegrityError(f"{len(survivors)} deleted thread(s) still readable: {survivors}")
        races.counter_report(
            expected,
            counter,
            rows,
            f"{user.label}'s thread {thread} written by notes, agent runs and deletes at once",
        )

    # ------------------------------------------------------------------ cost growth (point 6)
    def _chat_latencies(self, user: TestUser, thread: str, count: int) -> list[float]:
        latencies = []
        socket = open_blocking(user, f"{user.label}#latency", _ws(), HTTP_TIMEOUT)
        try:
            for n in range(count):
                frame = {
                    "type": "user_message",
                    "content": f"latency probe {n}",
                    "client_message_id": f"cost-{uuid.uuid4().hex[:8]}",
                    "thread_id": thread,
                }
                started = time.monotonic()
                frames = _frames_of(exchange(socket, frame, 30.0))
                if frames[-1].get("type") != "agent_completed":
                    raise IntegrityError(f"{user.label}'s latency probe ended {frames[-1].get('type')}")
                latencies.append(time.monotonic() - started)
        finally:
            socket.close_blocking()
        return latencies

    @keyword("Chat Latency Should Not Grow With Other Users' Data")
    def chat_latency_should_not_grow_with_other_users_data(
        self,
        user: TestUser,
        background_users: int = 500,
        threads_per_user: int = 4,
        messages_per_thread: int = 5,
        keys_per_user: int = 40,
        probes: int = 9,
        max_ratio: float = 3.0,
        min_growth: timedelta = timedelta(milliseconds=50),
    ) -> None:
        """Median chat latency of ``user`` (send to ``agent_completed``, ``probes`` runs) on the platform as
        it is, then again after a seeded background of other users' data exists: ``background_users``
        users with ``threads_per_user`` threads of ``messages_per_thread`` messages (rows, through
        ``${BACKEND_DATABASE_URL}``) and ``keys_per_user`` Redis keys each (sessions, agent contexts, cached
        lists, rate limits, through ``${REDIS_URL}``).  Fails when the median grew by more than
        ``max_ratio`` times *and* by more than ``min_growth``, twice: a first excess is confirmed by
        a second loaded and (after removal) quiet round, so a burst of other work on a shared
        machine does not fail it.  The background is removed afterwards.

        Example:
        | Chat Latency Should Not Grow With Other Users' Data | ${alice} | max_ratio=3.0 |
        """
        thread = start_thread(user, _ws(), f"cost probe {user.canary}", 20.0)
        self._chat_latencies(user, thread, 2)  # warm-up
        count = int(probes)
        quiet = statistics.median(self._chat_latencies(user, thread, count))
        seeded = self._seed_background(
            int(background_users), int(threads_per_user), int(messages_per_thread), int(keys_per_user)
        )
        rounds = []
        try:
            loaded = statistics.median(self._chat_latencies(user, thread, count))
            rounds.append((quiet, loaded))
            if self._grew(quiet, loaded, max_ratio, min_growth):
                # Confirm before failing: a burst of other work on a shared machine during the loaded
                # probes alone must not fail the check, a cost that grows with the data shows again.
                again = statistics.median(self._chat_latencies(user, thread, count))
                rounds.append((None, again))
        finally:
            self._remove_background(seeded)
        if len(rounds) == 2:
            rounds[1] = (statistics.median(self._chat_latencies(user, thread, count)), rounds[1][1])
        summary = "; then ".join(
            f"median chat latency {q * 1000:.1f} ms without and {v * 1000:.1f} ms with the background: "
            f"ratio {v / q:.2f}" for q, v in rounds
        )
        summary += (f" ({seeded['description']}; bound {max_ratio:g} and at least "
                    f"{_s(min_growth) * 1000:.0f} ms growth, confirmed by a second round before failing)")
        logger.info(summary)
        if all(self._grew(q, v, max_ratio, min_growth) for q, v in rounds) and len(rounds) == 2:
            raise IntegrityError(f"cost grows with other users' data: {summary}")

    @staticmethod
    def _grew(quiet: float, loaded: float, max_ratio: float, min_growth: timedelta) -> bool:
        return loaded > quiet * max_ratio and loaded - quiet > _s(min_growth)

    def _seed_background(self, users: int, threads: int, messages: int, keys: int) -> dict:
        tag = uuid.uuid4().hex[:8]
        user_ids = [str(uuid.uuid4()) for _ in range(users)]
        fetch(
            "backend", _database_url(),
            "WITH u AS (SELECT unnest(%s::uuid[]) AS user_id), "
            "t AS (INSERT INTO threads (thread_id, user_id, title, message_count) "
            "      SELECT gen_random_uuid(), u.user_id, 'background ' || %s, %s "
            "      FROM u, generate_series(1, %s) "
            "      RETURNING thread_id, user_id) "
            "INSERT INTO messages (message_id, thread_id, user_id, role, content) "
            "SELECT gen_random_uuid(), t.thread_id, t.user_id, 'user', 'background message ' || n "
            "FROM t, generate_series(1, %s) n RETURNING 1",
            (user_ids, tag, messages, threads, messages),
        )
        client = connect_redis("redis", context.current().get("REDIS_URL"))
        kinds = target_profile.current().background_key_kinds()  # the target's own key shapes
        try:
            with client.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    for n in range(keys):
                        key = kinds[n % len(kinds)].format(u=user_id, n=n)
                        pipe.set(key, f"background {tag}", ex=900)
                    if len(pipe) > 5000:
                        pipe.execute()
                pipe.execute()
        finally:
            client.close()
        description = (
            f"{users} other users x {threads} threads x {messages} messages "
            f"({users * threads * messages} message rows) and {users * keys} Redis keys"
        )
        logger.info(
            f"Seeded background: {description} (tag {tag}, db {mask_url(_database_url())})"
        )
        return {"user_ids": user_ids, "keys": keys, "description": description}

    def _remove_background(self, seeded: dict) -> None:
        fetch(
            "backend", _database_url(),
            "DELETE FROM threads WHERE user_id = ANY(%s::uuid[]) RETURNING 1",
            (seeded["user_ids"],),
        )
        client = connect_redis("redis", context.current().get("REDIS_URL"))
        kinds = target_profile.current().background_key_kinds()  # the target's own key shapes
        try:
            names = [
                kinds[n % len(kinds)].format(u=u, n=n)
                for u in seeded["user_ids"]
                for n in range(seeded["keys"])
            ]
            for start in range(0, len(names), 5000):
                client.delete(*names[start : start + 5000])
        finally:
            client.close()
