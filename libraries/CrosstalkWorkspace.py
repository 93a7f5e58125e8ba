"""Robot Framework library: the cross-service workspace transaction.

``POST /workspaces`` writes three stores in one all-or-nothing transaction: the auth
database counts the user's workspaces, the backend database holds the workspace, the
analytics store records a ``workspace_created`` event.  The keywords create workspaces
(one, or many at one instant), make a step fail through the contract's
``X-Crosstalk-Inject`` hook, and read the three stores to judge that the transaction was
applied everywhere or nowhere.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from enum import Enum

import requests
from crosstalk import context, races, testhooks
from crosstalk import profile as target_profile
from crosstalk.errors import CrosstalkError
from crosstalk.model import TestUser
from crosstalk.races import Outcome, WorkspaceState
from crosstalk.registry import Cleanup
from crosstalk.rest import Backend, json_or_text
from crosstalk.stores import fetch
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library

WORKSPACE_QUERIES = {
    "auth_count": "SELECT workspace_count FROM user_workspace_counts WHERE user_id = %(user_id)s",
    "backend_ids": "SELECT workspace_id FROM workspaces WHERE user_id = %(user_id)s",
    "analytics_ids": (
        "SELECT workspace_id FROM events WHERE user_id = %(user_id)s AND kind = 'workspace_created'"
    ),
}


class WorkspaceError(CrosstalkError):
    """A workspace transaction was not applied all-or-nothing, or answered what it should not."""


class InjectedFailure(Enum):
    """Which step of ``POST /workspaces`` the ``X-Crosstalk-Inject`` contract hook makes fail."""

    backend = "workspace_backend_fail"
    analytics = "workspace_analytics_fail"


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


def _database_url(name: str) -> str:
    url = context.current().get(name)
    if not url:
        raise ValueError(f"{name} is empty: the cross-store check reads all three databases")
    return url


def clickhouse_workspace_events(url: str, user_id: str) -> list[str]:
    """Workspace ids of the user's workspace_created events in ClickHouse (UNTESTED: no server here)."""
    try:
        import clickhouse_connect
    except ImportError:
        raise ValueError(
            "ANALYTICS_DATABASE_URL names ClickHouse but clickhouse-connect is not installed: "
            "pip install 'clickhouse-connect>=0.7,<1'"
        ) from None
    client = clickhouse_connect.get_client(dsn=url)
    try:
        result = client.query(
            "SELECT toString(workspace_id) FROM events "
            "WHERE user_id = {u:UUID} AND kind = 'workspace_created'",
            parameters={"u": user_id},
        )
        return [row[0] for row in result.result_rows]
    finally:
        client.close()


def workspace_state(user: TestUser) -> WorkspaceState:
    """What the three stores hold of ``user``'s workspaces."""
    # the context derives the analytics database from the backend's server unless it is set
    auth, backend, analytics = (_database_url(f"{name}_DATABASE_URL")
                                for name in ("AUTH", "BACKEND", "ANALYTICS"))
    queries = {**WORKSPACE_QUERIES, **target_profile.current().workspace_queries}
    params = {"user_id": user.user_id}
    count = fetch("auth", auth, queries["auth_count"], params)
    backend_ids = [str(r[0]) for r in fetch("backend", backend, queries["backend_ids"], params)]
    if analytics.startswith(("clickhouse", "http")):
        analytics_ids = clickhouse_workspace_events(analytics, str(user.user_id))
    else:
        analytics_ids = [str(r[0]) for r in fetch("analytics", analytics, queries["analytics_ids"], params)]
    return WorkspaceState(user.label, int(count[0][0] if count else 0), backend_ids, analytics_ids)


@library(scope="SUITE", version=VERSION, auto_keywords=False, listener=Cleanup())
class CrosstalkWorkspace:
    """The cross-service workspace transaction: all three stores or none.

    The target comes from the target context: ``${BACKEND_URL}``,
    ``${AUTH_DATABASE_URL}``, ``${BACKEND_DATABASE_URL}`` and ``${ANALYTICS_DATABASE_URL}``
    (derived from the backend's server unless set).  Users are `TestUser` objects from
    CrosstalkAuth.
    """

    def __init__(self) -> None:
        self._backend = Backend()

    def _create(self, user: TestUser, name: str, inject: InjectedFailure | None = None) -> requests.Response:
        headers = {testhooks.INJECT_HEADER: inject.value} if inject is not None else {}
        # the run prefix marks the workspace as this run's
        return self._backend.request("POST", user, "/workspaces", headers=headers,
                                     json={"name": f"{context.current().run_prefix}{name}"})

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
        backend = self._backend.url
        reason = testhooks.missing_injection(testhooks.capabilities(backend), failure.value, backend)
        if reason:
            ctx.skip(context.Capability.FAULT_INJECTION, reason)
        logger.info(f"{backend} honours {testhooks.INJECT_HEADER}: {failure.value}")

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
        reply = self._create(user, name, inject)
        body = json_or_text(reply)
        injected = f" ({testhooks.INJECT_HEADER}: {inject.value})" if inject is not None else ""
        logger.info(
            f"POST /workspaces {name!r}{injected} as {user.label} to {self._backend.url}: "
            f"{reply.status_code} in {(time.monotonic() - started) * 1000:.0f} ms: {body}"
        )
        if reply.status_code != expected_status:
            raise WorkspaceError(
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
            lambda i, actor: self._create(jobs[i][0], f"concurrent {actor}"),
            3 * _seconds(limit),
        )
        caption = f"{len(jobs)} concurrent workspace transactions"
        logger.info(races.outcomes_table(caption, outcomes), html=True)
        slow = [o for o in outcomes if o.ok and o.ended - o.started > _seconds(limit)]
        failed = [o for o in outcomes if not (o.ok and o.status == 201)]
        if failed:
            raise WorkspaceError(
                f"{len(failed)} of {len(jobs)} concurrent workspace transactions failed: "
                f"{'; '.join(str(o) for o in failed[:4])}"
            )
        if slow:
            raise WorkspaceError(
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
        state = workspace_state(user)
        logger.info(str(state))
        if not state.consistent:
            raise WorkspaceError(races.partial_state_report(state))
        if expected is not None and state.auth_count != expected:
            raise WorkspaceError(f"{state}: consistent, but {expected} workspaces were expected")

    @keyword("Every User's Workspaces Should Be Consistent")
    def every_users_workspaces_should_be_consistent(self, users: list[TestUser], expected: int) -> None:
        """For each user, the three stores agree on exactly ``expected`` workspaces.

        Example:
        | Every User's Workspaces Should Be Consistent | ${users} | 2 |
        """
        for user in users:
            self.workspace_state_should_be_consistent(user, expected)

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
        first = self._create(user, "doomed, first try", inject)
        if first.status_code != 503:
            raise WorkspaceError(f"precondition: the failing workspace of {user.label} answered "
                                 f"{first.status_code}, expected 503: {json_or_text(first)}")
        debris: list[str] = []
        ctx = context.current()
        url = ctx.get("AUTH_DATABASE_URL") or ctx.get("BACKEND_DATABASE_URL")
        if url:  # pg_prepared_xacts and pg_locks are server-wide
            time.sleep(_seconds(settle))
            prepared = fetch(
                "debris", url, "SELECT gid, database, extract(epoch FROM now() - prepared)::float "
                "FROM pg_prepared_xacts WHERE prepared < now() - %s * interval '1 second'",
                (_seconds(settle),))
            debris += [f"prepared transaction {gid} in {db}, {age:.1f} s old" for gid, db, age in prepared]
            locks = fetch("debris", url,
                          "SELECT count(*) FROM pg_locks WHERE virtualtransaction LIKE '-1/%%'")
            if locks and locks[0][0]:
                debris.append(f"{locks[0][0]} lock(s) held by prepared transactions")
        else:
            logger.info("No database URL: only the prompt answer to the next request is checked.")
        started = time.monotonic()
        try:
            answer = self._create(user, "doomed, second try", inject).status_code
        except requests.RequestException as exc:
            answer = f"no answer ({type(exc).__name__})"
        took = time.monotonic() - started
        logger.info(f"next workspace of {user.label}: {answer} in {took * 1000:.0f} ms")
        if took > _seconds(prompt):
            debris.append(f"{user.label}'s next workspace request took {took:.1f} s "
                          f"(limit {_seconds(prompt):g} s)")
        if debris:
            raise WorkspaceError(f"transaction debris after a failed workspace: {'; '.join(debris[:5])}")

    @keyword
    def leave_a_half_applied_workspace(self, user: TestUser) -> str:
        """Write a workspace row for ``user`` in the backend database only, as a coordinator that crashed
        without two-phase commit would; returns its id.  For proving the consistency check can fail.

        Example:
        | Leave A Half Applied Workspace | ${alice} |
        """
        workspace_id = str(uuid.uuid4())
        fetch(
            "backend", _database_url("BACKEND_DATABASE_URL"),
            "INSERT INTO workspaces (workspace_id, user_id, name) VALUES (%s, %s, %s) RETURNING workspace_id",
            (workspace_id, user.user_id, f"{context.current().run_prefix}half"),
        )
        return workspace_id

    @keyword
    def remove_half_applied_workspace(self, workspace_id: str) -> None:
        """Delete the row written by `Leave A Half Applied Workspace`.

        Example:
        | Remove Half Applied Workspace | ${workspace} |
        """
        fetch(
            "backend", _database_url("BACKEND_DATABASE_URL"),
            "DELETE FROM workspaces WHERE workspace_id = %s RETURNING workspace_id",
            (workspace_id,),
        )
