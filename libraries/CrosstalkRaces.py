"""Robot Framework library: platform races and the cross-service transaction.

Fires N operations against the platform at one instant (threads released by a
barrier), collects every outcome and asserts exactly-once semantics: one winner
per refresh token, no lost counter update, no session lost or left behind, no
frame or cached list reaching another user, Redis ``SET NX`` and
``WATCH``/``MULTI`` letting exactly one writer win, and the workspace
transaction applied in all three stores or in none.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from datetime import timedelta
from enum import Enum

import redis
import requests
from crosstalk import context, races, testhooks
from crosstalk import profile as target_profile
from crosstalk.htmllog import table
from crosstalk.model import TestUser
from crosstalk.races import Outcome, RaceError, Target
from crosstalk.registry import Cleanup
from crosstalk.secrets import mask
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library

TERMINAL = ("agent_completed", "agent_error")


class InjectedFailure(Enum):
    """Which step of ``POST /workspaces`` the ``X-Crosstalk-Inject`` contract hook makes fail."""

    backend = "workspace_backend_fail"
    analytics = "workspace_analytics_fail"


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


def _log_outcomes(caption: str, outcomes: list[Outcome]) -> None:
    rows = [
        (
            o.actor,
            "ok" if o.ok else "error",
            o.status if o.ok else o.error,
            f"{(o.ended - o.started) * 1000:.0f}",
        )
        for o in outcomes
    ]
    logger.info(table(("actor", "result", "status / error", "ms"), rows, caption), html=True)


@library(scope="SUITE", version=VERSION, auto_keywords=False, listener=Cleanup())
class CrosstalkRaces:
    """Concurrency checks over the platform: counters, caches, sessions, tokens, sockets, 2PC.

    The target comes from the Robot variables ``${AUTH_URL}``, ``${BACKEND_URL}``,
    ``${WS_URL}``, ``${REDIS_URL}``, ``${AUTH_DATABASE_URL}`` and
    ``${BACKEND_DATABASE_URL}`` (set by ``suites/__init__.robot`` or on the command
    line); the analytics database defaults to ``analytics`` on the backend's server
    (``${ANALYTICS_DATABASE_URL}`` overrides it).
    """

    def __init__(self) -> None:
        self._target: Target | None = None
        self._sockets: list = []

    # ------------------------------------------------------------------ target
    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = self._target_from_variables()
        return self._target

    @staticmethod
    def _target_from_variables() -> Target:
        ctx = context.current()

        def var(name: str) -> str:
            return ctx.get(name)

        target = Target(
            var("AUTH_URL"),
            var("BACKEND_URL"),
            var("WS_URL"),
            var("REDIS_URL"),
            var("AUTH_DATABASE_URL"),
            var("BACKEND_DATABASE_URL"),
            var("ANALYTICS_DATABASE_URL"),
        )
        try:
            health = requests.get(f"{target.backend_url}/health", timeout=5).json()
            target.faults = list(health.get("faults", []))
        except (requests.RequestException, ValueError):
            target.faults = []
        return target

    @keyword
    def failure_injection_should_be_available(self, failure: InjectedFailure) -> None:
        """Skip the test unless the target advertises the failure injection ``failure``.

        The contract's optional hook: the platform lists the injections it honours
        in ``GET /health`` under ``capabilities.fault_injection`` and makes the
        named step of a request fail when the request carries
        ``X-Crosstalk-Inject: <name>``.  Without it the test is skipped with one line
        (``needs:fault-injection``), never passed against something else.

        Example:
        | Failure Injection Should Be Available | backend |
        """
        ctx = context.current()
        ctx.require(context.Capability.FAULT_INJECTION)
        reason = testhooks.missing_injection(
            testhooks.capabilities(self.target.backend_url), failure.value, self.target.backend_url
        )
        if reason:
            ctx.skip(context.Capability.FAULT_INJECTION, reason)
        logger.info(f"{self.target.backend_url} honours {testhooks.INJECT_HEADER}: {failure.value}")

    # ------------------------------------------------------------------ users
    @keyword
    def create_race_users(self, count: int, prefix: str = "racer") -> list[TestUser]:
        """Register and log in ``count`` users (``racer01``...), each with its own canary.

        Example:
        | ${users}= | Create Race Users | 30 |
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        users = races.run_pool(
            count, lambda i: races.new_user(self.target, f"{prefix}{i + 1:02d}"), races.SIGN_IN_PARALLELISM
        )
        logger.info(f"Created {count} users: {', '.join(u.label for u in users)}")
        return users

    @keyword
    def start_thread_with_canary_title(
        self, user: TestUser, timeout: timedelta = timedelta(seconds=15)
    ) -> str:
        """Start a chat thread whose title carries ``user``'s canary; returns the thread id.

        Example:
        | ${thread}= | Start Thread With Canary Title | ${alice} |
        """
        thread = races.start_thread(
            self.target, user, f"notes of {user.label} {user.canary}", _seconds(timeout)
        )
        logger.info(f"{user.label} started thread {thread}")
        return thread

    @keyword
    def start_threads_with_canary_titles(
        self, users: list[TestUser], timeout: timedelta = timedelta(seconds=30)
    ) -> list[str]:
        """Every user starts one thread whose title carries its canary, several users at a time.

        Example:
        | Start Threads With Canary Titles | ${users} |
        """
        seconds = _seconds(timeout)
        return races.run_pool(
            len(users),
            lambda i: races.start_thread(
                self.target, users[i], f"notes of {users[i].label} {users[i].canary}", seconds
            ),
            races.SIGN_IN_PARALLELISM,
        )

    # ------------------------------------------------------------------ counter
    @keyword
    def send_messages_into_thread_at_once(
        self, user: TestUser, thread: str, count: int, timeout: timedelta = timedelta(seconds=30)
    ) -> list[Outcome]:
        """``count`` parallel ``POST /threads/{id}/messages`` by ``user``, released together; all must be 201.

        Example:
        | Send Messages Into Thread At Once | ${alice} | ${thread} | 50 |
        """
        sessions = races.warm_sessions(count, self.target.backend_url)

        def send(index: int, actor: str) -> requests.Response:
            return sessions[index].post(
                f"{self.target.backend_url}/threads/{thread}/messages",
                json={"content": f"note {index} {user.canary}"},
                headers=races.auth_header(user.access_token),
                timeout=races.HTTP_TIMEOUT,
            )

        outcomes = races.fire_at_once(
            [f"{user.label}#{i + 1}" for i in range(count)], send, _seconds(timeout)
        )
        for session in sessions:
            session.close()
        _log_outcomes(f"{count} parallel sends into thread {thread}", outcomes)
        failed = [o for o in outcomes if not (o.ok and o.status == 201)]
        if failed:
            raise RaceError(
                f"{len(failed)} of {count} parallel sends by {user.label} into thread {thread} "
                f"failed: {'; '.join(str(o) for o in failed[:5])}"
            )
        return outcomes

    @keyword
    def thread_message_count_should_be_exact(self, user: TestUser, thread: str, expected: int) -> None:
        """The thread holds ``expected`` messages and its ``message_count`` counts them exactly.

        What the counter counts comes from the target profile (``counters.message_count``):
        ``all`` messages, or ``user`` messages only (then the agent's answers are
        left out of both the counter and the expectation).

        Example:
        | Thread Message Count Should Be Exact | ${alice} | ${thread} | 52 |
        """
        counter = races.get_json(self.target, user, f"/threads/{thread}")["message_count"]
        messages = races.get_json(self.target, user, f"/threads/{thread}/messages")
        rows = len(messages)
        what = f"message count of {user.label}'s thread {thread}"
        if target_profile.current().message_count is target_profile.MessageCount.USER:
            counted = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "user")
            logger.info(f"thread {thread}: message_count={counter}, {rows} message rows of which {counted} "
                        f"are the user's (the profile counts user messages only), expected {expected} rows")
            if rows != expected:
                raise RaceError(f"{what}: {rows} messages stored, {expected} expected")
            races.counter_report(expected - (rows - counted), counter, counted, f"{what} (user messages)")
            return
        logger.info(f"thread {thread}: message_count={counter}, message rows={rows}, expected={expected}")
        races.counter_report(expected, counter, rows, what)

    # ------------------------------------------------------------------ refresh
    @keyword
    def refresh_concurrently_with_one_token(
        self, user: TestUser, clients: int, rounds: int = 3, timeout: timedelta = timedelta(seconds=20)
    ) -> dict:
        """``clients`` clients of ``user`` refresh with the same refresh token at once, ``rounds`` times.

        Each round after the first starts from a fresh login (a new token family).
        The clients' HTTP connections are opened before the barrier, so only the
        refresh requests themselves race.  Returns a race record for the checks below.

        Example:
        | ${race}= | Refresh Concurrently With One Token | ${alice} | 8 |
        """
        if clients < 2 or rounds < 1:
            raise ValueError(
                f"a refresh race needs at least 2 clients and 1 round, got {clients} and {rounds}"
            )
        record: dict = {"user": user, "rounds": []}
        sessions = races.warm_sessions(clients, self.target.auth_url)
        try:
            for number in range(1, rounds + 1):
                if number > 1:
                    races.login(self.target, user)
                token = user.tokens.refresh_token
                outcomes = races.fire_at_once(
                    [f"{user.label}/client{i + 1}" for i in range(clients)],
                    lambda i, actor, token=token: races.refresh(self.target, token, sessions[i]),
                    _seconds(timeout),
                )
                _log_outcomes(
                    f"round {number}: {clients} concurrent refreshes of {user.label} with refresh token "
                    f"{mask(token)}",
                    outcomes,
                )
                record["rounds"].append({"token": token, "outcomes": outcomes})
        finally:
            for session in sessions:
                session.close()
        return record

    @keyword
    def exactly_one_refresh_should_win(self, race: dict) -> None:
        """In every round, one refresh got 200 and a new token pair; every other got 401.

        Example:
        | Exactly One Refresh Should Win | ${race} |
        """
        for number, round_ in enumerate(race["rounds"], 1):
            winner = races.exactly_one_winner(
                round_["outcomes"],
                f"refresh race of {race['user'].label} with one refresh token (round {number})",
                lambda o: o.ok and o.status == 200,
                lambda o: o.ok and o.status == 401,
                "401",
            )
            round_["winner"] = winner.value.json()

    @keyword
    def no_token_should_be_issued_twice(self, race: dict) -> None:
        """Access and refresh tokens issued by the race (and the user's earlier ones) are all distinct.

        Example:
        | No Token Should Be Issued Twice | ${race} |
        """
        bodies = [o.value.json() for r in race["rounds"] for o in r["outcomes"] if o.ok and o.status == 200]
        access = [b["access_token"] for b in bodies] + race["user"].issued_access_tokens
        refresh = [b["refresh_token"] for b in bodies] + [r["token"] for r in race["rounds"]]
        twice = races.duplicates(access) + races.duplicates(refresh)
        if twice:
            raise RaceError(
                f"refresh race of {race['user'].label}: token(s) issued twice: "
                f"{', '.join(mask(t) for t in twice)}"
            )

    @keyword
    def reusing_the_raced_token_should_revoke_the_family(self, race: dict) -> None:
        """Replaying the last round's used token gets 401 and revokes the winner's new refresh token.

        Example:
        | Reusing The Raced Token Should Revoke The Family | ${race} |
        """
        label = race["user"].label
        last = race["rounds"][-1]
        replay = races.refresh(self.target, last["token"])
        if replay.status_code != 401:
            raise RaceError(
                f"replaying {label}'s used refresh token answered {replay.status_code}, expected 401"
            )
        newest = last.get("winner", {}).get("refresh_token")
        if newest is None:
            raise RaceError(
                f"{label}'s refresh race has no winner: run `Exactly One Refresh Should Win` first"
            )
        after = races.refresh(self.target, newest)
        if after.status_code != 401:
            raise RaceError(
                f"reuse detection did not revoke the family: {label}'s refresh token from the "
                f"winning refresh still works after the replay ({after.status_code})"
            )

    @keyword
    def refresh_during_an_active_chat_should_keep_the_chat_going(
        self, user: TestUser, timeout: timedelta = timedelta(seconds=20)
    ) -> None:
        """A slow run streams while ``user`` refreshes; it completes on the open socket, then a new socket
        opened with the new access token chats too.

        Example:
        | Refresh During An Active Chat Should Keep The Chat Going | ${alice} |
        """
        seconds = _seconds(timeout)
        result: dict = {}
        with races.open_socket(self.target, user, seconds) as ws:

            started = threading.Event()

            def refresh_mid_run() -> None:
                # refresh once the run streams (its first frame arrived), not after a guessed delay
                if started.wait(seconds):
                    result["refresh"] = races.refresh(self.target, user.tokens.refresh_token)

            refresher = threading.Thread(target=refresh_mid_run, daemon=True)
            refresher.start()
            frames = races.run_to_end(ws, user, f"[[slow:80]] long answer for {user.canary}", None, seconds,
                                      started=started)
            refresher.join(seconds)
        reply = result.get("refresh")
        if reply is None or reply.status_code != 200:
            got = reply.status_code if reply is not None else "no answer"
            raise RaceError(f"{user.label}'s refresh during the active chat answered {got}, expected 200")
        if frames[-1].get("type") != "agent_completed":
            raise RaceError(
                f"{user.label}'s chat did not complete on the open socket after the refresh: "
                f"it ended with {frames[-1].get('type')} ({[f.get('type') for f in frames]})"
            )
        body = reply.json()
        user.tokens.access_token, user.tokens.refresh_token = body["access_token"], body["refresh_token"]
        user.issued_access_tokens.append(body["access_token"])
        with races.open_socket(self.target, user, seconds) as ws:
            again = races.run_to_end(ws, user, "still there?", frames[-1].get("thread_id"), seconds)
        if again[-1].get("type") != "agent_completed":
            raise RaceError(f"{user.label}'s new socket with the refreshed token ended with {again[-1]}")
        logger.info(
            f"{user.label}: run completed on the open socket ({len(frames)} frames); "
            "a new socket with the new token chatted"
        )

    # ------------------------------------------------------------------ sockets and sessions
    @keyword
    def connect_all_users_at_once(
        self, users: list[TestUser], timeout: timedelta = timedelta(seconds=20)
    ) -> list:
        """Every user opens one WebSocket, all at the same instant; every handshake must succeed.

        Example:
        | ${sockets}= | Connect All Users At Once | ${users} |
        """
        outcomes = races.fire_at_once(
            [u.label for u in users],
            lambda i, actor: races.open_socket(self.target, users[i], _seconds(timeout)),
            _seconds(timeout),
        )
        failed = [o for o in outcomes if not o.ok]
        sockets = [(users[i], o.value) for i, o in enumerate(outcomes) if o.ok]
        self._sockets += [ws for _, ws in sockets]
        if failed:
            for _, ws in sockets:
                ws.close()
            raise RaceError(
                f"{len(failed)} of {len(users)} simultaneous connects failed: "
                f"{'; '.join(str(o) for o in failed[:5])}"
            )
        slowest = max(o.ended - o.started for o in outcomes)
        logger.info(
            f"{len(users)} simultaneous connects succeeded; slowest handshake {slowest * 1000:.0f} ms"
        )
        return sockets

    @keyword
    def disconnect_all_at_once(self, sockets: list, timeout: timedelta = timedelta(seconds=10)) -> None:
        """Close every socket of `Connect All Users At Once` at the same instant.

        Example:
        | Disconnect All At Once | ${sockets} |
        """
        races.fire_at_once(
            [u.label for u, _ in sockets], lambda i, actor: sockets[i][1].close(), _seconds(timeout)
        )

    @keyword
    def close_all_race_sockets(self) -> None:
        """Close every socket this library opened that is still open (a teardown safety net).

        Example:
        | [Teardown] | Close All Race Sockets |
        """
        sockets, self._sockets = self._sockets, []
        for ws in sockets:
            ws.close()

    @keyword
    def chat_from_all_sockets_at_once(
        self, sockets: list, timeout: timedelta = timedelta(seconds=30)
    ) -> dict:
        """Every socket sends one message with its user's canary at the same instant and reads its run.

        Returns ``label -> frames``.

        Example:
        | ${frames}= | Chat From All Sockets At Once | ${sockets} |
        """
        seconds = _seconds(timeout)
        outcomes = races.fire_at_once(
            [u.label for u, _ in sockets],
            lambda i, actor: races.run_to_end(
                sockets[i][1], sockets[i][0], f"check my numbers {sockets[i][0].canary}", None, seconds
            ),
            seconds + 5,  # each run's own timeout fires first, with the better message
        )
        failed = [o for o in outcomes if not o.ok]
        # Leaks first: they explain the runs that never finished on their own sockets.
        failed.sort(key=lambda o: "cross-user event" not in o.error)
        if failed:
            raise RaceError(
                f"{len(failed)} of {len(sockets)} simultaneous chats failed: "
                f"{'; '.join(str(o) for o in failed[:5])}"
            )
        return {o.actor: o.value for o in outcomes}

    @keyword
    def no_connection_should_receive_another_users_events(self, sockets: list, frames: dict) -> None:
        """Every frame a socket got carries its own user's id and no other user's canary.

        Example:
        | No Connection Should Receive Another Users Events | ${sockets} | ${frames} |
        """
        canaries = {u.canary: u.label for u, _ in sockets}
        leaks = []
        for user, _ in sockets:
            for frame in frames[user.label]:
                text = json.dumps(frame)
                if frame.get("user_id") not in (None, user.user_id):
                    leaks.append(
                        f"{user.label} got a {frame.get('type')} frame of user {frame.get('user_id')}"
                    )
                leaks += [
                    f"{user.label} got {owner}'s canary in a {frame.get('type')} frame"
                    for canary, owner in canaries.items()
                    if owner != user.label and canary in text
                ]
        if leaks:
            raise RaceError(
                f"cross-user events under {len(sockets)} simultaneous connections: {len(leaks)} "
                f"leak(s): {'; '.join(leaks[:5])}"
            )

    @keyword
    def every_run_should_arrive_in_order(self, frames: dict) -> None:
        """Per run: seq is 1, 2, 3... without gaps, agent_started first, agent_completed last.

        Example:
        | Every Run Should Arrive In Order | ${frames} |
        """
        problems = []
        for label, run in frames.items():
            events = [f for f in run if f.get("type") != "error"]
            seqs = [f.get("seq") for f in events]
            types = [f.get("type") for f in events]
            if seqs != list(range(1, len(seqs) + 1)):
                problems.append(f"{label}: seq {seqs}")
            elif not types or types[0] != "agent_started" or types[-1] not in TERMINAL:
                problems.append(f"{label}: events {types}")
            elif (
                "tool_executing" in types
                and "tool_completed" in types
                and (types.index("tool_executing") > types.index("tool_completed"))
            ):
                problems.append(f"{label}: tool_completed before tool_executing ({types})")
        if problems:
            raise RaceError(
                f"event order broken under load in {len(problems)} of {len(frames)} runs: "
                f"{'; '.join(problems[:5])}"
            )

    # ------------------------------------------------------------------ redis
    @keyword
    def race_set_if_absent_on_user_key(
        self, user: TestUser, writers: int, timeout: timedelta = timedelta(seconds=10)
    ) -> str:
        """``writers`` clients ``SET NX`` the same user-scoped key at once; exactly one must win.

        Returns the winner's actor name; the stored value must be the winner's.

        Example:
        | ${winner}= | Race Set If Absent On User Key | ${alice} | 20 |
        """
        key = f"race:{user.user_id}:lock:{uuid.uuid4().hex[:8]}"
        clients = [races.redis_client(self.target.redis_url) for _ in range(writers)]
        try:
            outcomes = races.fire_at_once(
                [f"writer{i + 1}" for i in range(writers)],
                lambda i, actor: bool(clients[i].set(key, actor, nx=True, ex=60)),
                _seconds(timeout),
            )
            _log_outcomes(f"SET {key} NX by {writers} writers", outcomes)
            winner = races.exactly_one_winner(
                outcomes,
                f"SET NX race on {key}",
                lambda o: o.ok and o.value,
                lambda o: o.ok and not o.value,
                "a refused SET",
            )
            stored = (clients[0].get(key) or b"").decode()
            if stored != winner.actor:
                raise RaceError(f"SET NX race on {key}: {winner.actor} won but the key holds {stored!r}")
            clients[0].delete(key)
            return winner.actor
        finally:
            for client in clients:
                client.close()

    @keyword
    def race_watched_transactions_on_user_key(
        self, user: TestUser, writers: int, timeout: timedelta = timedelta(seconds=10)
    ) -> str:
        """``writers`` clients WATCH one key, all read it, then all try MULTI/INCR/EXEC.

        The first EXEC commits; WATCH must abort every other (WatchError), so the
        counter ends at exactly 1.

        Example:
        | Race Watched Transactions On User Key | ${alice} | 10 |
        """
        key = f"race:{user.user_id}:counter:{uuid.uuid4().hex[:8]}"
        clients = [races.redis_client(self.target.redis_url) for _ in range(writers)]
        all_read = threading.Barrier(writers)

        def transact(index: int, actor: str) -> bool:
            with clients[index].pipeline() as pipe:
                pipe.watch(key)
                pipe.get(key)
                all_read.wait(_seconds(timeout))  # everyone has read before anyone writes
                pipe.multi()
                pipe.incr(key)
                try:
                    pipe.execute()
                    return True
                except redis.WatchError:
                    return False

        try:
            outcomes = races.fire_at_once(
                [f"writer{i + 1}" for i in range(writers)], transact, _seconds(timeout)
            )
            _log_outcomes(f"WATCH/MULTI on {key} by {writers} writers", outcomes)
            winner = races.exactly_one_winner(
                outcomes,
                f"WATCH/MULTI race on {key}",
                lambda o: o.ok and o.value,
                lambda o: o.ok and o.value is False,
                "a WatchError",
            )
            value = int(clients[0].get(key) or 0)
            clients[0].delete(key)
            if value != 1:
                raise RaceError(
                    f"WATCH/MULTI race on {key}: counter is {value}, expected 1 (lost or double write)"
                )
            return winner.actor
        finally:
            for client in clients:
                client.close()

    # ------------------------------------------------------------------ thread-list cache
    @keyword
    def thread_list_should_show_a_new_thread_at_once(
        self, user: TestUser, readers: int = 10, timeout: timedelta = timedelta(seconds=20)
    ) -> None:
        """While ``readers`` clients keep reading ``user``'s cached thread list, ``user`` starts a thread;
        the first read after the start returns it (no stale cache).

        Example:
        | Thread List Should Show A New Thread At Once | ${alice} |
        """
        seconds = _seconds(timeout)
        races.get_json(self.target, user, "/threads")  # warm the cache
        stop = threading.Event()

        def reader(index: int, actor: str) -> int:
            reads = 0
            while not stop.is_set():
                races.get_json(self.target, user, "/threads")
                reads += 1
            return reads

        def writer() -> str:
            try:
                return self.start_thread_with_canary_title(user, timeout)
            finally:
                stop.set()

        results: dict = {}
        background = threading.Thread(
            target=lambda: results.update(
                reads=races.fire_at_once([f"reader{i + 1}" for i in range(readers)], reader, seconds)
            ),
            daemon=True,
        )
        background.start()
        try:
            thread = writer()
        finally:
            stop.set()
            background.join(seconds)
        listed = [t["thread_id"] for t in races.get_json(self.target, user, "/threads")]
        reads = sum(o.value or 0 for o in results.get("reads", []))
        logger.info(
            f"{reads} concurrent reads of {user.label}'s thread list while thread {thread} was created"
        )
        if thread not in listed:
            raise RaceError(
                f"stale cache: {user.label}'s thread list read right after creating thread {thread} "
                f"does not contain it (it lists {listed})"
            )

    @keyword
    def thread_lists_should_never_cross_users(
        self, users: list[TestUser], rounds: int = 5, timeout: timedelta = timedelta(seconds=30)
    ) -> None:
        """All ``users`` read their thread lists at once, ``rounds`` times; each sees only its own threads.

        Example:
        | Thread Lists Should Never Cross Users | ${users} |
        """
        owners = {t: u.label for u in users for t in u.thread_ids}
        leaks: list[str] = []
        for _ in range(rounds):
            outcomes = races.fire_at_once(
                [u.label for u in users],
                lambda i, actor: races.get_json(self.target, users[i], "/threads"),
                _seconds(timeout),
            )
            for user, outcome in zip(users, outcomes, strict=False):
                if not outcome.ok:
                    raise RaceError(f"{user.label}'s thread list read failed: {outcome.error}")
                leaks += [
                    f"{user.label} saw {owners.get(t['thread_id'], 'an unknown user')}'s thread "
                    f"{t['thread_id']} ({t['title']!r})"
                    for t in outcome.value
                    if t["thread_id"] not in user.thread_ids
                ]
        if leaks:
            raise RaceError(
                f"cache key collision: thread lists crossed users {len(leaks)} time(s): "
                f"{'; '.join(leaks[:4])}"
            )

    @keyword
    def read_thread_titles_while_others_hang_up(
        self,
        readers: list[TestUser],
        leavers: list[TestUser],
        rounds: int = 6,
        timeout: timedelta = timedelta(seconds=60),
    ) -> dict:
        """The ChatGPT incident load: ``leavers`` request their thread list and hang up mid-request while
        ``readers`` read theirs, ``rounds`` times.  Returns what every reader saw.

        Example:
        | ${seen}= | Read Thread Titles While Others Hang Up | ${readers} | ${leavers} |
        """
        seconds = _seconds(timeout)
        everyone = [*readers, *leavers]
        for user in everyone:
            races.get_json(self.target, user, "/threads")  # cached: the reply is a Redis read
        seen: dict[str, list] = {u.label: [] for u in readers}
        rng = random.Random(2624)
        actors = [u.label for u in everyone]
        for _ in range(rounds):
            delays = [rng.uniform(0.005, 0.02) for _ in leavers]

            def act(index: int, actor: str, delays: list = delays):
                if index < len(readers):
                    return races.get_json(self.target, readers[index], "/threads")
                leaver = index - len(readers)
                return races.disconnect_mid_request(self.target, leavers[leaver], "/threads", delays[leaver])

            outcomes = races.fire_at_once(actors, act, seconds)
            for user, outcome in zip(readers, outcomes, strict=False):
                seen[user.label].append(outcome.value if outcome.ok else {"error": outcome.error})
        return {"readers": readers, "everyone": everyone, "seen": seen}

    @keyword
    def no_user_should_have_read_another_users_titles(self, report: dict) -> None:
        """Every list a reader got holds only its own threads: no other user's canary, no read error.

        Example:
        | No User Should Have Read Another Users Titles | ${seen} |
        """
        canaries = {u.canary: u.label for u in report["everyone"]}
        leaks, errors = [], []
        for user in report["readers"]:
            for reply in report["seen"][user.label]:
                if isinstance(reply, dict) and "error" in reply:
                    errors.append(f"{user.label}: {reply['error']}")
                    continue
                text = json.dumps(reply)
                leaks += [
                    f"{user.label} read {owner}'s thread titles ({canary})"
                    for canary, owner in canaries.items()
                    if owner != user.label and canary in text
                ]
        if leaks:
            raise RaceError(
                f"Redis reply leak (redis-py 2624): {len(leaks)} read(s) returned another user's "
                f"data: {'; '.join(leaks[:4])}"
            )
        if errors:
            raise RaceError(f"{len(errors)} thread-list read(s) failed: {'; '.join(errors[:4])}")

    # ------------------------------------------------------------------ workspaces
    def _create_workspace(
        self, user: TestUser, name: str, inject: InjectedFailure | None = None
    ) -> requests.Response:
        headers = races.auth_header(user.access_token)
        if inject is not None:
            headers[testhooks.INJECT_HEADER] = inject.value
        return requests.post(
            f"{self.target.backend_url}/workspaces",
            json={"name": f"{context.current().run_prefix}{name}"},  # the run prefix marks it as ours
            headers=headers,
            timeout=races.HTTP_TIMEOUT,
        )

    @keyword
    def create_workspace(
        self,
        user: TestUser,
        name: str,
        expected_status: int = 201,
        inject: InjectedFailure | None = None,
    ) -> dict:
        """``POST /workspaces {name}`` as ``user``; fails unless the status is ``expected_status``.

        ``inject`` asks the platform, through the ``X-Crosstalk-Inject`` contract hook,
        to make that step fail for this one request (check availability first with
        `Failure Injection Should Be Available`).

        Example:
        | ${ws}= | Create Workspace | ${alice} | Q3 budget |
        | Create Workspace | ${alice} | doomed | expected_status=503 | inject=backend |
        """
        started = time.monotonic()
        reply = self._create_workspace(user, name, inject)
        body = races.json_or_text(reply)
        injected = f" ({testhooks.INJECT_HEADER}: {inject.value})" if inject is not None else ""
        logger.info(
            f"POST /workspaces {name!r}{injected} as {user.label} to {self.target.backend_url}: "
            f"{reply.status_code} in "
            f"{(time.monotonic() - started) * 1000:.0f} ms: {body}"
        )
        if reply.status_code != expected_status:
            raise RaceError(
                f"creating workspace {name!r} as {user.label} answered {reply.status_code}, "
                f"expected {expected_status}: {body}"
            )
        return body if isinstance(body, dict) else {"body": body}

    @keyword
    def create_workspaces_concurrently(
        self, users: list[TestUser], per_user: int = 1, limit: timedelta = timedelta(seconds=5)
    ) -> list[Outcome]:
        """Every user creates ``per_user`` workspaces, all at once; each must succeed within ``limit``.

        Example:
        | Create Workspaces Concurrently | ${users} | limit=5s |
        """
        jobs = [(u, n) for u in users for n in range(per_user)]
        outcomes = races.fire_at_once(
            [f"{u.label}/ws{n + 1}" for u, n in jobs],
            lambda i, actor: self._create_workspace(jobs[i][0], f"concurrent {actor}"),
            3 * _seconds(limit),
        )
        _log_outcomes(f"{len(jobs)} concurrent workspace transactions", outcomes)
        slow = [o for o in outcomes if o.ok and o.ended - o.started > _seconds(limit)]
        failed = [o for o in outcomes if not (o.ok and o.status == 201)]
        if failed:
            raise RaceError(
                f"{len(failed)} of {len(jobs)} concurrent workspace transactions failed: "
                f"{'; '.join(str(o) for o in failed[:4])}"
            )
        if slow:
            raise RaceError(
                f"{len(slow)} concurrent workspace transaction(s) took longer than "
                f"{_seconds(limit):g} s: {'; '.join(str(o) for o in slow[:4])}"
            )
        return outcomes

    @keyword
    def workspace_state_should_be_consistent(self, user: TestUser, expected: int | None = None) -> None:
        """Auth count, backend rows and analytics events of ``user`` agree (and equal ``expected`` if given).

        A mismatch is reported as a partially applied cross-service transaction,
        naming which stores hold the write.

        Example:
        | Workspace State Should Be Consistent | ${alice} | expected=1 |
        """
        state = races.workspace_state(self.target, user)
        logger.info(str(state))
        if not state.consistent:
            raise RaceError(races.partial_state_report(state))
        if expected is not None and state.auth_count != expected:
            raise RaceError(f"{state}: consistent, but {expected} workspaces were expected")

    @keyword
    def failed_workspace_should_leave_nothing_behind(
        self, user: TestUser, inject: InjectedFailure, prompt: timedelta = timedelta(seconds=3),
        settle: timedelta = timedelta(seconds=2),
    ) -> None:
        """After a ``POST /workspaces`` whose step ``inject`` failed (``X-Crosstalk-Inject``), no
        transaction debris remains: no prepared transaction (``pg_prepared_xacts``) and no lock held
        by one (``pg_locks``) outlives ``settle``, where the databases are reachable; and ``user``'s
        next workspace request is answered within ``prompt`` (a leaked prepared transaction holds
        the user's row lock, so the next one stalls).

        Example:
        | Failed Workspace Should Leave Nothing Behind | ${bob} | backend | prompt=3s |
        """
        first = self._create_workspace(user, "doomed, first try", inject)
        if first.status_code != 503:
            raise RaceError(f"precondition: the failing workspace of {user.label} answered "
                            f"{first.status_code}, expected 503: {races.json_or_text(first)}")
        debris: list[str] = []
        url = self.target.auth_database_url or self.target.backend_database_url
        if url:  # pg_prepared_xacts and pg_locks are server-wide
            time.sleep(_seconds(settle))
            prepared = races.pg_rows(
                url, "SELECT gid, database, extract(epoch FROM now() - prepared)::float "
                "FROM pg_prepared_xacts WHERE prepared < now() - %s * interval '1 second'",
                (_seconds(settle),))
            debris += [f"prepared transaction {gid} in {db}, {age:.1f} s old" for gid, db, age in prepared]
            locks = races.pg_value(url, "SELECT count(*) FROM pg_locks WHERE virtualtransaction LIKE '-1/%%'")
            if locks:
                debris.append(f"{locks} lock(s) held by prepared transactions")
        else:
            logger.info("No database URL: only the prompt answer to the next request is checked.")
        started = time.monotonic()
        try:
            answer = self._create_workspace(user, "doomed, second try", inject).status_code
        except requests.RequestException as exc:
            answer = f"no answer ({type(exc).__name__})"
        took = time.monotonic() - started
        logger.info(f"next workspace of {user.label}: {answer} in {took * 1000:.0f} ms")
        if took > _seconds(prompt):
            debris.append(f"{user.label}'s next workspace request took {took:.1f} s "
                          f"(limit {_seconds(prompt):g} s)")
        if debris:
            raise RaceError(f"transaction debris after a failed workspace: {'; '.join(debris[:5])}")

    @keyword
    def leave_a_half_applied_workspace(self, user: TestUser) -> str:
        """Write a workspace row for ``user`` in the backend database only, as a coordinator that crashed
        without two-phase commit would; returns its id.  For proving the consistency check can fail.

        Example:
        | Leave A Half Applied Workspace | ${alice} |
        """
        workspace_id = str(uuid.uuid4())
        races.pg_value(
            self.target.backend_database_url,
            "INSERT INTO workspaces (workspace_id, user_id, name) VALUES (%s, %s, %s) "
            "RETURNING workspace_id",
            (workspace_id, user.user_id, f"{context.current().run_prefix}half"),
        )
        return workspace_id

    @keyword
    def remove_half_applied_workspace(self, workspace_id: str) -> None:
        """Delete the row written by `Leave A Half Applied Workspace`.

        Example:
        | Remove Half Applied Workspace | ${workspace} |
        """
        races.pg_value(
            self.target.backend_database_url,
            "DELETE FROM workspaces WHERE workspace_id = %s RETURNING workspace_id",
            (workspace_id,),
        )
