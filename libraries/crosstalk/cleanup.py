"""Data hygiene: remove what a run created on the target, at the end of the run or after a crash.

Everything Crosstalk creates carries the run's prefix (``RUN_PREFIX``, e.g.
``ct2611301648ab12-``): user emails (``<prefix><label>-<hex>@crosstalk.test``) and
workspace names.  Threads, messages, runs, sessions and events belong to those users.

Removal, in order:

1. **API** (always): every recorded user's threads are deleted with ``DELETE /threads/{id}``
   (the contract's only delete), logging in again when the token was revoked.  The users
   are read from this process's records, or from the ledger ``results/.crosstalk/ledger/
   <prefix>.jsonl`` (email, password, user id; mode 0600) written as users are created, so
   a crashed run can be cleaned later.
2. **Stores** (when ``db`` / ``analytics-db`` / ``redis`` are configured): rows of the
   prefixed users (``users`` by email prefix, their threads with messages and runs,
   workspaces, workspace counts, analytics events) and Redis keys naming their ids.
   This needs DELETE privileges; without them the step is reported and skipped.
   A target profile may replace the SQL (``cleanup_sql`` on the profile object).

Command line (a crashed run)::

    python -m crosstalk.cleanup --prefix ct2611301648      # every run whose prefix starts so
    python -m crosstalk.cleanup --prefix ct2611301648 --dry-run

The target comes from the ``CROSSTALK_*`` environment variables (or ``--auth-url`` ...).

Example:
    report = cleanup.clean(ctx)     # at the end of a run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .httpretry import HTTP_TIMEOUT
from .paths import results_root

LEDGER_DIR = results_root() / ".crosstalk" / "ledger"  # the checkout's results/, or ./results
PARALLEL = 8
_LOCK = threading.Lock()

# the reference schema; a profile's ``cleanup_sql`` replaces it (same keys, same parameters)
STORE_CLEANUP_SQL: dict[str, list[str]] = {
    # %(prefix)s: the email prefix pattern (LIKE), %(ids)s: the users' ids as text
    "AUTH_DATABASE_URL": [
        "DELETE FROM user_workspace_counts WHERE user_id::text = ANY(%(ids)s)",
        "DELETE FROM users WHERE email LIKE %(prefix)s",
    ],
    "BACKEND_DATABASE_URL": [
        "DELETE FROM workspaces WHERE user_id::text = ANY(%(ids)s)",
        "DELETE FROM threads WHERE user_id::text = ANY(%(ids)s)",  # messages and runs cascade
    ],
    "ANALYTICS_DATABASE_URL": [
        "DELETE FROM events WHERE user_id::text = ANY(%(ids)s)",
    ],
}
USER_IDS_SQL = "SELECT user_id::text FROM users WHERE email LIKE %(prefix)s"


@dataclass
class LedgerUser:
    email: str
    password: str
    user_id: str = ""
    access_token: str = ""


@dataclass
class Report:
    prefix: str
    users: int = 0
    threads_deleted: int = 0
    rows_deleted: dict[str, int] = field(default_factory=dict)
    redis_keys_deleted: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        rows = ", ".join(f"{n} {k}" for k, n in self.rows_deleted.items()) or "stores not cleaned"
        problems = ""
        if self.problems:
            problems = f"; {len(self.problems)} problem(s): {'; '.join(self.problems[:3])}"
        return (f"Cleanup of run {self.prefix}: {self.users} users, {self.threads_deleted} threads deleted "
                f"over the API, rows: {rows}, {self.redis_keys_deleted} Redis keys{problems}")


# ---------------------------------------------------------------------- ledger
def ledger_file(prefix: str, directory: Path = LEDGER_DIR) -> Path:
    safe = "".join(c for c in prefix if c.isalnum() or c in "-_") or "run"
    return directory / f"{safe}.jsonl"


def record(prefix: str, user: Any, directory: Path = LEDGER_DIR) -> None:
    """Append one created user to the run's ledger (so a crashed run can still be cleaned)."""
    path = ledger_file(prefix, directory)
    line = json.dumps({"email": user.email, "password": str(getattr(user.password, "value", user.password)),
                       "user_id": str(user.user_id or "")})
    with _LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(line + "\n")


def read_ledgers(prefix: str, directory: Path = LEDGER_DIR) -> tuple[list[LedgerUser], list[Path]]:
    users, files = [], []
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        if not path.stem.startswith(prefix.rstrip("-")):
            continue
        files.append(path)
        for raw in path.read_text().splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            users.append(LedgerUser(entry.get("email", ""), entry.get("password", ""),
                                    entry.get("user_id", "")))
    return users, files


# ---------------------------------------------------------------------- API
def _token(auth_url: str, user: LedgerUser, http: requests.Session) -> str:
    if user.access_token:
        return user.access_token
    reply = http.post(f"{auth_url}/auth/login", json={"email": user.email, "password": user.password},
                      timeout=HTTP_TIMEOUT)
    reply.raise_for_status()
    user.access_token = reply.json()["access_token"]
    return user.access_token


def _delete_threads_of(auth_url: str, backend_url: str, user: LedgerUser) -> int:
    with requests.Session() as http:
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {_token(auth_url, user, http)}"}
            listed = http.get(f"{backend_url}/threads", headers=headers, timeout=HTTP_TIMEOUT)
            if listed.status_code == 401 and attempt == 0:
                user.access_token = ""  # revoked (logout, refresh reuse): log in again
                continue
            listed.raise_for_status()
            deleted = 0
            for thread in listed.json():
                thread_id = thread.get("thread_id") if isinstance(thread, dict) else None
                if thread_id and http.delete(f"{backend_url}/threads/{thread_id}", headers=headers,
                                             timeout=HTTP_TIMEOUT).status_code in (200, 204, 404):
                    deleted += 1
            return deleted
    return 0


def delete_threads(auth_url: str, backend_url: str, users: Iterable[LedgerUser], report: Report) -> None:
    users = list(users)

    def one(user: LedgerUser) -> int:
        try:
            return _delete_threads_of(auth_url.rstrip("/"), backend_url.rstrip("/"), user)
        except (requests.RequestException, ValueError, KeyError) as exc:
            report.problems.append(f"{user.email}: {type(exc).__name__}")
            return 0

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        report.threads_deleted += sum(pool.map(one, users))


# ---------------------------------------------------------------------- stores
def clean_stores(values: dict[str, str], prefix: str, known_ids: Iterable[str], report: Report,
                 sql: dict[str, list[str]] | None = None, user_ids_sql: str | None = None) -> None:
    """Delete the prefixed users' rows and Redis keys in every store that is configured."""
    import psycopg2

    sql = sql or STORE_CLEANUP_SQL
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    ids = {i for i in known_ids if i}
    auth_url = values.get("AUTH_DATABASE_URL", "")
    if auth_url:
        try:
            with psycopg2.connect(auth_url, connect_timeout=5) as conn, conn.cursor() as cur:
                cur.execute(user_ids_sql or USER_IDS_SQL, {"prefix": pattern})
                ids |= {row[0] for row in cur.fetchall()}
        except psycopg2.Error as exc:
            report.problems.append(f"AUTH_DATABASE_URL: {str(exc).strip().splitlines()[0]}")
    for name, statements in sql.items():
        url = values.get(name, "")
        if not url:
            continue
        try:
            conn = psycopg2.connect(url, connect_timeout=5)
        except psycopg2.Error as exc:
            report.problems.append(f"{name}: {str(exc).strip().splitlines()[0]}")
            continue
        try:
            for statement in statements:
                try:
                    with conn, conn.cursor() as cur:
                        cur.execute(statement, {"prefix": pattern, "ids": sorted(ids)})
                        table = statement.split("FROM", 1)[1].split()[0]
                        report.rows_deleted[table] = report.rows_deleted.get(table, 0) + cur.rowcount
                except psycopg2.Error as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    report.problems.append(f"{name}: {first} (needs DELETE privilege)")
        finally:
            conn.close()
    redis_url = values.get("REDIS_URL", "")
    if redis_url and ids:
        import redis

        try:
            client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
            doomed = [key for key in client.scan_iter("*", count=1000)
                      if any(i in key.decode(errors="replace") for i in ids)]
            for start in range(0, len(doomed), 500):
                report.redis_keys_deleted += client.delete(*doomed[start:start + 500])
            client.close()
        except redis.RedisError as exc:
            report.problems.append(f"REDIS_URL: {type(exc).__name__}: {str(exc)[:80]}")


# ---------------------------------------------------------------------- run end
def clean(ctx: Any) -> Report:
    """Remove what this process created on ``ctx``'s target (API, then the configured stores)."""
    report = Report(ctx.run_prefix)
    users = [LedgerUser(u.email, str(getattr(u.password, "value", u.password)), str(u.user_id or ""),
                        getattr(getattr(u, "tokens", None), "access_token", "") or "")
             for u in ctx.created_users]
    report.users = len(users)
    if users:
        delete_threads(ctx.get("AUTH_URL"), ctx.get("BACKEND_URL"), users, report)
    stores = {name: ctx.get(name) for name in STORE_CLEANUP_SQL}
    stores["REDIS_URL"] = ctx.get("REDIS_URL")
    sql = getattr(ctx.profile, "cleanup_sql", None) if ctx.profile is not None else None
    if any(stores.values()):
        user_ids_sql = getattr(ctx.profile, "user_ids_sql", None) if ctx.profile is not None else None
        clean_stores(stores, ctx.run_prefix, (u.user_id for u in users), report, sql, user_ids_sql)
    if not report.problems:
        ledger_file(ctx.run_prefix).unlink(missing_ok=True)
    return report


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    from crosstalk import context

    parser = argparse.ArgumentParser(
        prog="python -m crosstalk.cleanup",
        description="Remove what Crosstalk runs with this prefix left on the target (after a crash). "
                    "The target comes from CROSSTALK_* environment variables unless given here.")
    parser.add_argument("--prefix", required=True, help="run prefix or its start, e.g. ct2611301648")
    for name in ("AUTH_URL", "BACKEND_URL", "AUTH_DATABASE_URL", "BACKEND_DATABASE_URL",
                 "ANALYTICS_DATABASE_URL", "REDIS_URL"):
        parser.add_argument("--" + name.lower().replace("_", "-"), dest=name, default=None)
    parser.add_argument("--ledger-dir", type=Path, default=LEDGER_DIR)
    parser.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    args = parser.parse_args(argv)
    if len(args.prefix) < 4:
        parser.error("--prefix must have at least 4 characters (e.g. ct26): refusing to match everything")
    given = {k: v for k, v in vars(args).items() if k.isupper() and v}
    ctx = context.build(given, os.environ)
    if not ctx.configured:
        parser.error("no target: set CROSSTALK_AUTH_URL and CROSSTALK_BACKEND_URL "
                     "(or --auth-url/--backend-url)")
    users, files = read_ledgers(args.prefix, args.ledger_dir)
    if args.dry_run:
        print(f"would remove {len(users)} ledger users' threads from {ctx.get('BACKEND_URL')} and rows of "
              f"emails LIKE '{args.prefix}%' from the configured stores; ledgers: {[str(f) for f in files]}")
        return 0
    report = Report(args.prefix, users=len(users))
    delete_threads(ctx.get("AUTH_URL"), ctx.get("BACKEND_URL"), users, report)
    stores = {name: ctx.get(name) for name in (*STORE_CLEANUP_SQL, "REDIS_URL")}
    clean_stores(stores, args.prefix, (u.user_id for u in users), report)
    print(report.line())
    if not report.problems:
        for path in files:
            path.unlink(missing_ok=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
