"""Robot Framework library: canaries and the isolation oracle across a set of test users."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg2
import requests
from assertionengine import AssertionOperator
from crosstalk import assertions, context, htmllog, oracle, registry
from crosstalk import profile as target_profile
from crosstalk.context import Capability
from crosstalk.httpretry import HTTP_TIMEOUT, pooled_session
from crosstalk.metrics import FAIRNESS_LATENCY_FLOOR_S, format_seconds
from crosstalk.model import Evidence, TestUser
from crosstalk.oracle import Observations, RoundStats, RuleResult, SessionRecord
from crosstalk.poll import poll_until
from crosstalk.secrets import mask_url
from crosstalk.stores import StoreError, connect_postgres, connect_redis, query, read_value, scan_keys
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library

Kind = assertions.Kind
# the figures of a chat round (Measure Chat Round) and how their thresholds are read
ROUND_METRICS = {"mean": Kind.DURATION, "median": Kind.DURATION, "p95": Kind.DURATION, "max": Kind.DURATION,
                 "round_time": Kind.DURATION, "throughput": Kind.NUMBER, "fairness": Kind.NUMBER,
                 "runs": Kind.NUMBER, "users": Kind.NUMBER}

MAX_PARALLEL = 16
SESSION_GRACE_S = 2.0
SKIP = {"", "none", "skip", "off"}



def _variable(name: str) -> Any:
    return context.current().get(name) or None


@library(scope="GLOBAL", version=VERSION, auto_keywords=False)
class CrosstalkIsolation:
    """The isolation oracle: did any user see or store anything of another user?

    Every test user carries a unique ``canary``; suites weave it into the messages
    they send.  `Check Isolation` gathers, for every user: the frames their sockets
    received, their REST views (``GET /threads`` and each thread's messages, fetched
    with their own token), their rows in the backend database (``threads``,
    ``messages``, ``runs``), the Redis values of every key that carries their user
    id, and the Redis session records; then it runs every rule and logs a table
    "rule | users | items checked | violations".

    The database and Redis are read from ``${BACKEND_DATABASE_URL}`` and
    ``${REDIS_URL}`` (or given URLs; ``NONE`` skips a source).  A violation fails
    with one line naming both users and where the foreign data was found.
    """

    def __init__(self) -> None:
        # keep-alive pool; a GET the server's idle close raced is retried once on a fresh connection
        self._http = pooled_session(pool_maxsize=MAX_PARALLEL)

    # ------------------------------------------------------------ evidence
    def _get(self, url: str, user: TestUser) -> requests.Response | None:
        try:
            return self._http.get(url, headers={"Authorization": f"Bearer {user.access_token}"},
                                  timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            raise AssertionError(
                f"Isolation check could not read {url} for {user.label}: {type(exc).__name__}"
            ) from None

    def _rest_of(self, user: TestUser, base: str) -> tuple[list[str], list[Evidence], str]:
        """(listed thread ids, bodies, note) of one user's own REST view."""
        if not user.tokens:
            return [], [], "not logged in"
        response = self._get(f"{base}/threads", user)
        if response is None or response.status_code != 200:
            code = response.status_code if response is not None else "no answer"
            return [], [], f"GET /threads answered {code} (token revoked?)"
        body = response.json()
        listed = [str(t.get("thread_id")) for t in body if isinstance(t, dict)]
        evidence = [Evidence(user.label, "REST GET /threads", response.text)]
        for thread_id in sorted(set(listed) | user.thread_ids):
            messages = self._get(f"{base}/threads/{thread_id}/messages", user)
            if messages is not None and messages.status_code == 200:
                evidence.append(Evidence(
                    user.label, f"REST GET /threads/{oracle.short(thread_id)}/messages", messages.text
                ))
        return listed, evidence, f"{len(listed)} threads listed, {len(evidence)} bodies"

    def _gather_rest(self, users: list[TestUser], base: str, obs: Observations, sources: list) -> None:
        workers = max(1, min(MAX_PARALLEL, len(users)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda u: self._rest_of(u, base), users))
        for user, (listed, evidence, note) in zip(users, results, strict=True):
            if evidence:
                obs.rest_thread_lists[user.label] = listed
            obs.evidence.extend(evidence)
            sources.append((f"REST {user.label}", note))

    @staticmethod
    def _gather_rows(users: list[TestUser], url: str, obs: Observations, sources: list) -> None:
        by_id = {u.user_id: u for u in users if u.user_id}
        known_threads = sorted({t for u in users for t in u.thread_ids})
        # ownership queries in the platform's own tables and types, from the target profile
        profile = target_profile.current()
        params = {"user_ids": [str(u) for u in by_id], "thread_ids": known_threads}
        conn = connect_postgres("backend (isolation check)", url)
        try:
            rows = {view: query(conn, sql, params) for view, sql in profile.ownership.items()}
        except psycopg2.Error as exc:
            raise StoreError(
                f"Isolation check could not read the backend DB with the ownership queries of profile "
                f"{profile.name}: {str(exc).strip().splitlines()[0]}"
            ) from None
        finally:
            conn.close()
        for row in rows["threads"]:
            obs.db_thread_owners[str(row["thread_id"])] = str(row["user_id"])
        for table, table_rows in rows.items():
            for row in table_rows:
                owner = by_id.get(str(row.get("user_id")))
                if owner is None:
                    continue  # a row of someone outside this check (another suite's user)
                key = row.get("message_id") or row.get("run_id") or row.get("thread_id")
                obs.evidence.append(Evidence(
                    owner.label, f"backend DB {table} row {oracle.short(key)}", oracle.row_text(row)
                ))
                if table != "threads":
                    obs.db_row_threads.append((owner.label, table, str(row["thread_id"])))
        counts = ", ".join(f"{len(r)} {t}" for t, r in rows.items())
        sources.append(("backend DB", f"{counts} rows from {mask_url(url)}"))

    @staticmethod
    def _gather_redis(users: list[TestUser], url: str, obs: Observations, sources: list) -> None:
        client = connect_redis("redis (isolation check)", url)
        try:
            keys = scan_keys(client, "*")
            attributed = 0
            is_session_key = target_profile.current().is_session_key
            for key in keys:
                owner = oracle.attribute_key(key, users)
                is_session = is_session_key(key)
                if owner is None and not is_session:
                    continue
                kind, value = read_value(client, key)
                if value is None:
                    continue  # expired between SCAN and read
                if is_session and isinstance(value, dict):
                    obs.sessions.append(SessionRecord(key, value))
                if owner is not None:
                    attributed += 1
                    text = oracle.value_text(value)
                    obs.evidence.append(Evidence(owner.label, f"Redis {kind} {key}", text))
            CrosstalkIsolation._settle_sessions(client, obs, {u.user_id for u in users})
        finally:
            client.close()
        sessions = len(obs.sessions)
        sources.append(("Redis", f"{len(keys)} keys scanned, {attributed} attributed, {sessions} sessions"))

    @staticmethod
    def _settle_sessions(client: Any, obs: Observations, ours: set[str | None]) -> None:
        """Give sessions of just-closed sockets a moment to go: the server removes them after the close."""
        connected = obs.connected_user_ids
        if connected is None:
            return

        def observe() -> list:
            stale = [r for r in obs.sessions if r.fields.get("user_id") in ours - connected]
            gone = {r.key for r in stale if not client.exists(r.key)}
            obs.sessions = [r for r in obs.sessions if r.key not in gone]
            return [r for r in stale if r.key not in gone]

        poll_until(observe, lambda stale: not stale, SESSION_GRACE_S)

    @staticmethod
    def _connected_user_ids() -> set[str]:
        # every socket any library opened (Chat, Load, Races) is in the registry
        return registry.open_user_ids()

    def _observe(
        self, users: list[TestUser], backend_url: str | None, database_url: str | None, redis_url: str | None,
    ) -> tuple[Observations, list]:
        obs = Observations(connected_user_ids=self._connected_user_ids())
        sources: list = [("frames", f"{sum(len(u.frames) for u in users)} frames of {len(users)} users")]
        backend = backend_url if backend_url is not None else _variable("BACKEND_URL")
        if str(backend or "").lower() not in SKIP:
            self._gather_rest(users, str(backend).rstrip("/"), obs, sources)
        ctx = context.current()
        database = database_url if database_url is not None else _variable("BACKEND_DATABASE_URL")
        if database_url is None and not ctx.has(Capability.DB):
            ctx.incomplete(Capability.DB, "database rows")
            sources.append(("backend DB", f"not read: {ctx.reason(Capability.DB)}"))
        elif str(database or "").lower() not in SKIP:
            self._gather_rows(users, str(database), obs, sources)
        redis_source = redis_url if redis_url is not None else _variable("REDIS_URL")
        if redis_url is None and not ctx.has(Capability.REDIS):
            ctx.incomplete(Capability.REDIS, "Redis values and sessions")
            sources.append(("Redis", f"not read: {ctx.reason(Capability.REDIS)}"))
        elif str(redis_source or "").lower() not in SKIP:
            self._gather_redis(users, str(redis_source), obs, sources)
        return obs, sources

    # ------------------------------------------------------------ reporting
    @staticmethod
    def _report(results: list[RuleResult], sources: list | None = None) -> None:
        if sources:
            logger.info(htmllog.table(("source", "gathered"), sources, "Isolation evidence"), html=True)
        logger.info(htmllog.table(
            ("rule", "users", "items checked", "violations"), oracle.summary_rows(results), "Isolation rules",
        ), html=True)
        violations = [(v.rule, v.message) for r in results for v in r.violations]
        if violations:
            logger.info(htmllog.table(("rule", "violation"), violations, "Isolation violations"), html=True)
        message = oracle.failure_message(results)
        if message:
            raise AssertionError(message)

    @staticmethod
    def _users(users: tuple[Any, ...]) -> list[TestUser]:
        flat: list[Any] = []
        for item in users:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        bad = [repr(u) for u in flat if not isinstance(u, TestUser)]
        if bad:
            raise ValueError(
                "Isolation keywords take TestUser objects (from Create Test Users), "
                f"got {', '.join(bad[:3])}."
            )
        return flat

    def _check(self, users: tuple[Any, ...], rules: list[str] | None, backend_url: str | None = None,
               database_url: str | None = None, redis_url: str | None = None, gather: bool = True) -> None:
        checked = self._users(users)
        oracle.check_users(checked)
        if gather:
            obs, sources = self._observe(checked, backend_url, database_url, redis_url)
        else:
            obs, sources = Observations(), [("frames", f"{sum(len(u.frames) for u in checked)} frames")]
        self._report(oracle.run_rules(checked, obs, rules), sources)

    # ------------------------------------------------------------ keywords
    @keyword("Check Isolation")
    def check_isolation(
        self, *users: TestUser | list, backend_url: str | None = None, database_url: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        """Runs every isolation rule across ``users`` and fails listing every violation found.

        Rules: thread ids unique per user; access tokens and ``jti`` unique; every
        event a user received carries that user's id and one of that user's own runs;
        no user's canary in another user's frames, REST bodies, database rows or
        Redis values; ``GET /threads`` lists only the caller's threads; ``messages``
        and ``runs`` rows stay in their user's own threads; Redis sessions belong to
        the connection's user.  ``backend_url``, ``database_url`` and ``redis_url``
        default to ``${BACKEND_URL}``, ``${BACKEND_DATABASE_URL}`` and ``${REDIS_URL}``;
        ``NONE`` skips that source.

        Example:
        | Check Isolation | @{users} |
        | Check Isolation | ${alice} | ${bob} | redis_url=NONE |
        """
        self._check(users, None, backend_url, database_url, redis_url)

    @keyword("Canaries Should Not Leak")
    def canaries_should_not_leak(self, *users: TestUser | list) -> None:
        """Fails if any user's canary appears in a frame, REST body, row or Redis value of another user.

        Example:
        | Canaries Should Not Leak | ${alice} | ${bob} |
        """
        self._check(users, ["canaries do not leak"])

    @keyword("Events Should Reach Only Their User")
    def events_should_reach_only_their_user(self, *users: TestUser | list) -> None:
        """Fails if a user received an event of another user's run (checks the frames only).

        Example:
        | Events Should Reach Only Their User | @{users} |
        """
        self._check(users, ["events reach only their user"], gather=False)

    @keyword("Thread Ids Should Be Unique Per User")
    def thread_ids_should_be_unique_per_user(self, *users: TestUser | list) -> None:
        """Fails if one thread id shows up for two users (runs, REST listings, database owners).

        Example:
        | Thread Ids Should Be Unique Per User | @{users} |
        """
        self._check(users, ["thread ids unique per user"])

    @keyword("Tokens Should Be Unique Per User")
    def tokens_should_be_unique_per_user(self, *users: TestUser | list) -> None:
        """Fails if two users share an access token or a ``jti``, or a token's ``sub`` is another user.

        Example:
        | Tokens Should Be Unique Per User | @{users} |
        """
        self._check(users, ["tokens and jti unique"], gather=False)

    @keyword("Threads Listed Should Be Own Threads")
    def threads_listed_should_be_own_threads(self, *users: TestUser | list) -> None:
        """Fails if any user's ``GET /threads`` lists a thread of someone else.

        Example:
        | Threads Listed Should Be Own Threads | ${alice} | ${bob} |
        """
        self._check(users, ["REST lists only own threads"], redis_url="NONE")

    @keyword("Rows Should Stay In Own Threads")
    def rows_should_stay_in_own_threads(self, *users: TestUser | list) -> None:
        """Fails if a ``messages`` or ``runs`` row of a user was written into another user's thread.

        Example:
        | Rows Should Stay In Own Threads | ${alice} | ${bob} |
        """
        self._check(users, ["DB rows stay in own threads"], backend_url="NONE", redis_url="NONE")

    @keyword("Sessions Should Belong To Their User")
    def sessions_should_belong_to_their_user(self, *users: TestUser | list) -> None:
        """Fails if a Redis session record of these users names another user or outlives its connection.

        Example:
        | Sessions Should Belong To Their User | @{users} |
        """
        self._check(users, ["sessions belong to their user"], backend_url="NONE", database_url="NONE")

    @keyword("Message With Canary")
    def message_with_canary(self, user: TestUser, text: str) -> str:
        """Returns ``text`` with the user's canary woven in, so a leak of this message can be traced.

        Example:
        | ${message} = | Message With Canary | ${alice} | What does my plan cost? |
        """
        return f"{text} (ref {user.canary})"

    # ------------------------------------------------------------ round statistics
    @keyword("Measure Chat Round")
    def measure_chat_round(
        self, runs: list, fairness_floor: timedelta = timedelta(seconds=FAIRNESS_LATENCY_FLOOR_S),
    ) -> RoundStats:
        """Latency (mean, median, p95, max), throughput and fairness of finished runs; logs them as a table.

        Latency of a run is send -> ``agent_completed``.  Throughput is completed
        runs per second from the first send to the last completion.  Fairness is
        Jain's index of each user's mean latency (1.0 = all users served alike),
        each counted as at least ``fairness_floor`` (default 250 ms): waits
        shorter than that are alike to a user, and a short stall of the test
        machine must not read as the platform favouring some users.

        Example:
        | ${stats} = | Measure Chat Round | ${runs} |
        | ${stats} = | Measure Chat Round | ${runs} | fairness_floor=100ms |
        | Get Chat Round Metric | ${stats} | mean | < | 5s |
        """
        done = [r for r in runs if r.status == "completed" and r.time_to_done is not None]
        latencies: dict[str, list[float]] = {}
        for run in done:
            latencies.setdefault(run.user.label, []).append(run.time_to_done)
        if not done:
            raise AssertionError(f"None of the {len(runs)} runs completed: nothing to measure.")
        wall = max(r.done_monotonic for r in done) - min(r.sent_monotonic for r in runs)
        stats = oracle.round_stats(latencies, wall, fairness_floor.total_seconds())
        logger.info(htmllog.table(("metric", "value"), [
            ("runs completed", f"{stats.runs} of {len(runs)}"), ("users", stats.users),
            ("mean latency", format_seconds(stats.mean)), ("median latency", format_seconds(stats.median)),
            ("p95 latency", format_seconds(stats.p95)), ("max latency", format_seconds(stats.max)),
            ("throughput", f"{stats.throughput:.1f} msg/s over {format_seconds(wall)}"),
            (f"fairness (Jain; waits under {format_seconds(fairness_floor.total_seconds())} count alike)",
             f"{stats.fairness:.3f}"),
        ], "Chat round"), html=True)
        return stats

    @keyword("Get Chat Round Metric")
    def get_chat_round_metric(
        self,
        stats: RoundStats,
        metric: str,
        assertion_operator: AssertionOperator | None = None,
        assertion_expected: Any = None,
        message: str | None = None,
    ) -> float:
        """Returns one figure of a measured chat round; with an operator, asserts it (a threshold).

        ``metric`` is ``mean``, ``median``, ``p95``, ``max`` (latency, seconds),
        ``round_time`` (first send to last completion, seconds), ``throughput`` (runs per
        second), ``fairness`` (Jain's index), ``runs`` or ``users``.  Durations compare with
        durations (``5s``, ``800ms``).  A failure names the round's users and runs, the
        measured value and the threshold; a met threshold shows in report.html.

        Example:
        | ${stats} = | Measure Chat Round | ${runs} |
        | Get Chat Round Metric | ${stats} | mean | < | 5s |
        | Get Chat Round Metric | ${stats} | fairness | > | 0.7 |
        | ${p95} = | Get Chat Round Metric | ${stats} | p95 |
        """
        name = metric.strip().lower()
        if name not in ROUND_METRICS:
            raise ValueError(f"Unknown chat round metric '{metric}': use {', '.join(ROUND_METRICS)}.")
        value = stats.wall if name == "round_time" else getattr(stats, name)
        outcome = assertions.check(
            lambda: value, assertion_operator, assertion_expected, kind=ROUND_METRICS[name], subject=name,
            what=f"chat round of {stats.users} users ({stats.runs} runs): {name}", message=message)
        if not outcome.passed:
            raise AssertionError(outcome.failure)
        if assertion_operator is not None:
            logger.info(f"ok: {outcome.expression}: measured {outcome.shown}")
            assertions.report_met(f"{name} {outcome.shown} (threshold: {outcome.expression})")
        return outcome.result

    @keyword("Tool Results Should Only Hold Own Messages")
    def tool_results_should_only_hold_own_messages(self, run: Any, *own_messages: str) -> None:
        """Fails if a ``tool_completed`` result of the run holds data of another user.

        Every value anywhere in each tool result (any JSON shape: strings, objects,
        nested lists) is searched for the canary of every other user this run's
        connection has met and for any other user's message text, and the run's
        own messages must be the only messages it quotes.

        Example:
        | Tool Results Should Only Hold Own Messages | ${follow_up} | ${first.content} |
        """
        results = [e for e in run.events if e.get("type") == "tool_completed"]
        if not results:
            raise AssertionError(f"Run {run.name} of {run.user.label} has no tool_completed event to check.")
        own_canary = run.user.canary
        for event in results:
            values = list(target_profile.walk_values((event.get("payload") or {}).get("result")))
            foreign = [
                value for value in values
                if "CANARY-" in value and (not own_canary or own_canary not in value)
                and not any(own and own in value for own in own_messages)
            ]
            listed = ((event.get("payload") or {}).get("result") or {}).get("earlier_messages")
            if isinstance(listed, list) and all(isinstance(item, str) for item in listed):
                # the reference shape, a list of message texts: each must be one of the run's own
                foreign += [item for item in listed if item not in own_messages]
            if foreign:
                raise AssertionError(
                    f"Tool result of {run.user.label}'s run {oracle.short(run.run_id)} "
                    f"(seq {event.get('seq')}) holds data that is not {run.user.label}'s: "
                    f"{foreign[0][:120]!r}"
                )
        logger.info(f"{len(results)} tool result(s) of {run.user.label}'s run hold only their own messages")
