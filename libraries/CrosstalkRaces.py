"""Robot Framework library: platform races over REST and the stores.

Fires N operations against the platform at one instant (threads released by a
barrier, ``crosstalk.races``), collects every outcome and asserts exactly-once
semantics: no lost counter update, Redis ``SET NX``
and ``WATCH``/``MULTI`` letting exactly one writer win, and cached thread lists that
never go stale or reach another user (the ChatGPT incident of March 2023).

The operations use the libraries' own clients: the backend REST client
(``crosstalk.rest``), the WebSocket connection (``crosstalk.connection``) and the
store layer (``crosstalk.stores``).  Refresh-token races are in CrosstalkAuth, the
simultaneous-socket scenarios are built from CrosstalkChat, and the cross-service
transaction is CrosstalkWorkspace.  Session records are counted by CrosstalkStores
(``Get Session Count``; business keywords in ``stores.resource``).
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from datetime import timedelta
from typing import TypeVar

import redis
import requests
from crosstalk import connection, context, races
from crosstalk import profile as target_profile
from crosstalk.httpretry import HTTP_TIMEOUT
from crosstalk.model import TestUser
from crosstalk.races import Outcome, RaceError
from crosstalk.registry import Cleanup
from crosstalk.rest import Backend, bearer, service_url, warm_sessions
from crosstalk.stores import connect_redis
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library

T = TypeVar("T")


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


def _log_outcomes(caption: str, outcomes: list[Outcome]) -> None:
    logger.info(races.outcomes_table(caption, outcomes), html=True)


def _redis(what: str) -> redis.Redis:
    return connect_redis(what, context.current().get("REDIS_URL"))


@library(scope="SUITE", version=VERSION, auto_keywords=False, listener=Cleanup())
class CrosstalkRaces:
    """Concurrency checks over the platform: counters, caches, Redis check-then-set.

    The target comes from the target context (``${BACKEND_URL}``, ``${WS_URL}``,
    ``${REDIS_URL}``; set by ``suites/__init__.robot`` or on the command line).  Users
    are `TestUser` objects from CrosstalkAuth.
    """

    def __init__(self) -> None:
        self._backend = Backend()

    # ------------------------------------------------------------------ counter
    @keyword
    def send_messages_into_thread_at_once(
        self, user: TestUser, thread: str, count: int, timeout: timedelta = timedelta(seconds=30)
    ) -> list[Outcome]:
        """``count`` parallel ``POST /threads/{id}/messages`` by ``user``, released together; all must be 201.

        Example:
        | Send Messages Into Thread At Once | ${alice} | ${thread} | 50 |
        """
        backend = self._backend.url
        sessions = warm_sessions(count, backend)

        def send(index: int, actor: str) -> requests.Response:
            return sessions[index].post(
                f"{backend}/threads/{thread}/messages",
                json={"content": f"note {index} {user.canary}"},
                headers=bearer(user.access_token),
                timeout=HTTP_TIMEOUT,
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
        counter = self._backend.get_json(user, f"/threads/{thread}")["message_count"]
        messages = self._backend.get_json(user, f"/threads/{thread}/messages")
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
        clients = [_redis(f"redis (writer {n + 1})") for n in range(writers)]
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
            stored = clients[0].get(key) or ""
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
        clients = [_redis(f"redis (writer {n + 1})") for n in range(writers)]
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
        self._backend.get_json(user, "/threads")  # warm the cache
        stop = threading.Event()

        def reader(index: int, actor: str) -> int:
            reads = 0
            while not stop.is_set():
                self._backend.get_json(user, "/threads")
                reads += 1
            return reads

        def writer() -> str:
            try:
                return connection.start_thread(user, service_url("WS_URL"),
                                               f"notes of {user.label} {user.canary}", seconds)
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
        listed = [t["thread_id"] for t in self._backend.get_json(user, "/threads")]
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
                lambda i, actor: self._backend.get_json(users[i], "/threads"),
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
            self._backend.get_json(user, "/threads")  # cached: the reply is a Redis read
        seen: dict[str, list] = {u.label: [] for u in readers}
        rng = random.Random(2624)
        actors = [u.label for u in everyone]
        for _ in range(rounds):
            delays = [rng.uniform(0.005, 0.02) for _ in leavers]

            def act(index: int, actor: str, delays: list = delays):
                if index < len(readers):
                    return self._backend.get_json(readers[index], "/threads")
                leaver = index - len(readers)
                return self._backend.hang_up_mid_request(leavers[leaver], "/threads", delays[leaver])

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
