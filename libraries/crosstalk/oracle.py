"""The isolation oracle: rules over what every test user saw and stored.

Pure logic, no I/O: `CrosstalkIsolation` gathers the observations (frames,
REST bodies, database rows, Redis values, session records) and this module
decides.  Every rule returns a `RuleResult`: how many items it checked and the
violations it found, each naming the user whose data it was, the user it came
from, and where it was found, so a failure reads as one line.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import CrosstalkError
from .metrics import FAIRNESS_LATENCY_FLOOR_S, jain_index
from .model import Evidence, Frame, TestUser
from .stats import percentile

MAX_LISTED = 10
MIN_CANARY_LENGTH = 8
_CANARY_WORD = re.compile(r"CANARY-[A-Za-z0-9_-]+")
_CANARY_TOKEN = re.compile(r"(?=(CANARY-[A-Za-z0-9_-]+))")  # every start, even inside a token


@dataclass
class Violation:
    rule: str
    message: str  # one line, without the "Isolation violated: " prefix

    def __str__(self) -> str:
        return self.message


@dataclass
class RuleResult:
    rule: str
    users: int
    checked: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations


@dataclass
class SessionRecord:
    """One ``session:{user_id}:{connection_id}`` hash read from Redis."""

    key: str
    fields: dict[str, str]


@dataclass
class Observations:
    """What the library gathered beyond the users' own frames and evidence.

    `rest_thread_lists`: user label -> thread ids that user's `GET /threads` listed.
    `db_thread_owners`: thread id -> owning user id, from the backend `threads` table.
    `db_row_threads`: (user label, table, thread id) of every `messages`/`runs` row of a user.
    `sessions`: session hashes from Redis; `connected_user_ids`: users with an open
    socket (None when unknown, then only key/field agreement is checked).
    `evidence`: extra owned data (REST bodies, rows, Redis values) besides `user.evidence`.
    """

    rest_thread_lists: dict[str, list[str]] = field(default_factory=dict)
    db_thread_owners: dict[str, str] = field(default_factory=dict)
    db_row_threads: list[tuple[str, str, str]] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    connected_user_ids: set[str] | None = None
    evidence: list[Evidence] = field(default_factory=list)


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def short(value: Any, keep: int = 8) -> str:
    text = str(value)
    return text if len(text) <= keep else text[:keep] + "…"


def describe_frame(frame: Frame) -> str:
    data = frame.data or {}
    kind = frame.type or "(not JSON)"
    details = []
    if data.get("run_id"):
        details.append(f"run {short(data['run_id'])}")
    if data.get("seq") is not None:
        details.append(f"seq {data['seq']}")
    inner = f" ({', '.join(details)})" if details else ""
    return f"frame {kind}{inner} at {clock(frame.at)} on {frame.connection}"


def jwt_claims(token: str) -> dict[str, Any]:
    """The unverified claims of a JWT (the oracle compares, it does not authenticate)."""
    try:
        payload = token.split(".")[1]
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(decoded)
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _tokens_of(user: TestUser) -> list[str]:
    tokens = list(user.issued_access_tokens)
    if user.tokens and user.tokens.access_token not in tokens:
        tokens.append(user.tokens.access_token)
    return tokens


def _events(user: TestUser) -> list[Frame]:
    """Frames the server sent to this user that belong to an agent run."""
    return [f for f in user.frames if f.direction == "in" and f.data and f.data.get("run_id")]


def _sent_message_ids(user: TestUser) -> set[str]:
    return {
        str(f.data["client_message_id"])
        for f in user.frames
        if f.direction == "out" and f.data and f.data.get("client_message_id")
    }


# ---------------------------------------------------------------------- rules
def thread_ids_unique(users: Sequence[TestUser], obs: Observations) -> RuleResult:
    """No thread id belongs to two users (own runs, REST listing, database owner)."""
    by_id = {u.user_id: u for u in users if u.user_id}
    seen: dict[str, tuple[str, str]] = {}  # thread id -> (label, source)
    violations: list[Violation] = []
    flagged: set[str] = set()
    for user in users:
        sources = [(t, "own runs") for t in sorted(user.thread_ids)]
        sources += [(t, "REST GET /threads") for t in obs.rest_thread_lists.get(user.label, [])]
        sources += [
            (t, "backend DB threads") for t, owner in obs.db_thread_owners.items() if owner == user.user_id
        ]
        for thread_id, source in sources:
            first = seen.setdefault(thread_id, (user.label, source))
            if first[0] != user.label and thread_id not in flagged:
                flagged.add(thread_id)
                violations.append(Violation("thread ids unique per user", (
                    f"thread {short(thread_id)} belongs to both {first[0]} ({first[1]}) "
                    f"and {user.label} ({source})")))
    for thread_id, owner in obs.db_thread_owners.items():
        label = seen.get(thread_id, ("", ""))[0]
        if owner in by_id and label and by_id[owner].label != label and thread_id not in flagged:
            violations.append(Violation("thread ids unique per user", (
                f"thread {short(thread_id)} of {label} is owned by {by_id[owner].label} in the backend DB")))
    return RuleResult("thread ids unique per user", len(users), len(seen), violations)


def tokens_unique(users: Sequence[TestUser], obs: Observations | None = None) -> RuleResult:
    """No access token or `jti` is shared by two users, and every token's `sub` is its user."""
    violations: list[Violation] = []
    tokens: dict[str, str] = {}
    jtis: dict[str, str] = {}
    checked = 0
    for user in users:
        for token in _tokens_of(user):
            checked += 1
            claims = jwt_claims(token)
            other = tokens.setdefault(token, user.label)
            if other != user.label:
                violations.append(Violation("tokens and jti unique", (
                    f"the same access token was issued to {other} and {user.label}")))
            jti = claims.get("jti")
            if jti:
                other = jtis.setdefault(str(jti), user.label)
                if other != user.label:
                    violations.append(Violation("tokens and jti unique", (
                        f"jti {short(jti)} appears in tokens of {other} and {user.label}")))
            sub = claims.get("sub")
            if user.user_id and sub and str(sub) != user.user_id:
                owner = next((u.label for u in users if u.user_id == str(sub)), f"user id {short(sub)}")
                violations.append(Violation("tokens and jti unique", (
                    f"an access token issued to {user.label} has sub of {owner}")))
    return RuleResult("tokens and jti unique", len(users), checked, violations)


def events_reach_only_their_user(users: Sequence[TestUser], obs: Observations | None = None) -> RuleResult:
    """Every run event a user received carries that user's id and one of that user's own messages/runs."""
    obs = obs or Observations()
    by_user_id = {u.user_id: u.label for u in users if u.user_id}
    cmid_owner: dict[str, str] = {}
    run_owner: dict[str, str] = {}
    thread_owner = {t: by_user_id[o] for t, o in obs.db_thread_owners.items() if o in by_user_id}
    for user in users:
        for cmid in _sent_message_ids(user):
            cmid_owner.setdefault(cmid, user.label)
        for run_id in user.run_ids:
            run_owner.setdefault(run_id, user.label)
        for thread_id in user.thread_ids:
            thread_owner.setdefault(thread_id, user.label)
    violations: list[Violation] = []
    checked = 0
    for user in users:
        own_cmids = _sent_message_ids(user)
        for frame in _events(user):
            checked += 1
            data = frame.data or {}
            event_user = str(data.get("user_id") or "")
            cmid = str(data.get("client_message_id") or "")
            run_id, thread_id = str(data["run_id"]), str(data.get("thread_id") or "")
            where = describe_frame(frame)
            owner = (
                by_user_id.get(event_user)
                or cmid_owner.get(cmid)
                or run_owner.get(run_id)
                or thread_owner.get(thread_id)
            )
            if owner and owner != user.label:
                violations.append(Violation("events reach only their user", (
                    f"{user.label} received {owner}'s event: {where}")))
            elif event_user != (user.user_id or event_user):
                violations.append(Violation("events reach only their user", (
                    f"{user.label} received an event of unknown user id {short(event_user)}: {where}")))
            elif cmid not in own_cmids and run_id not in user.run_ids and thread_id not in user.thread_ids:
                violations.append(Violation("events reach only their user", (
                    f"{user.label} received an event of a run it never started: {where}")))
    return RuleResult("events reach only their user", len(users), checked, violations)


def _owned_texts(user: TestUser, obs: Observations) -> Iterable[tuple[str, str]]:
    for frame in user.frames:
        if frame.direction == "in":
            yield describe_frame(frame), frame.raw
    for item in [*user.evidence, *(e for e in obs.evidence if e.owner == user.label)]:
        yield item.where, item.text


def canaries_do_not_leak(users: Sequence[TestUser], obs: Observations | None = None) -> RuleResult:
    """No user's canary appears in a frame, REST body, row or Redis value that belongs to another user."""
    obs = obs or Observations()
    canaries = [(u.label, u.canary) for u in users if u.canary and len(u.canary) >= MIN_CANARY_LENGTH]
    # canaries shaped CANARY-<word chars> are found by one scan of each text and a dict lookup (thousands
    # of load users); any other canary is searched for in every text
    tokened = {c: label for label, c in canaries if _CANARY_WORD.fullmatch(c)}
    others = [(label, c) for label, c in canaries if c not in tokened]
    violations: list[Violation] = []
    checked = 0
    for user in users:
        for where, text in _owned_texts(user, obs):
            checked += 1
            found: set[str] = set()
            if "CANARY-" in text:
                for token in _CANARY_TOKEN.findall(text):
                    # a token is a canary or a canary with a suffix ("-m7"): try each prefix ending before '-'
                    cut = len(token)
                    while cut > 0:
                        label = tokened.get(token[:cut])
                        if label is not None:
                            found.add(label)
                        cut = token.rfind("-", 0, cut)
            found.update(label for label, canary in others if canary in text)
            for label in sorted(found):
                if label != user.label:
                    violations.append(Violation("canaries do not leak", (
                        f"canary of {label} found in {user.label}'s {where}")))
    return RuleResult("canaries do not leak", len(users), checked, violations)


def rest_lists_only_own_threads(users: Sequence[TestUser], obs: Observations) -> RuleResult:
    """Each user's `GET /threads` lists only threads that user owns."""
    by_user_id = {u.user_id: u.label for u in users if u.user_id}
    others: dict[str, str] = {}
    for user in users:
        for thread_id in user.thread_ids:
            others.setdefault(thread_id, user.label)
    violations: list[Violation] = []
    checked = 0
    for user in users:
        for thread_id in obs.rest_thread_lists.get(user.label, []):
            checked += 1
            db_owner = obs.db_thread_owners.get(thread_id)
            if db_owner and db_owner != user.user_id:
                owner = by_user_id.get(db_owner, f"user id {short(db_owner)}")
                violations.append(Violation("REST lists only own threads", (
                    f"{user.label}'s GET /threads lists thread {short(thread_id)} of {owner}")))
            elif others.get(thread_id, user.label) != user.label and not db_owner:
                violations.append(Violation("REST lists only own threads", (
                    f"{user.label}'s GET /threads lists thread {short(thread_id)} of {others[thread_id]}")))
    return RuleResult("REST lists only own threads", len(users), checked, violations)


def rows_stay_in_own_threads(users: Sequence[TestUser], obs: Observations) -> RuleResult:
    """Every `messages`/`runs` row of a user points at a thread that user owns."""
    by_user_id = {u.user_id: u.label for u in users if u.user_id}
    labels = {u.label: u for u in users}
    violations: list[Violation] = []
    for label, table, thread_id in obs.db_row_threads:
        owner = obs.db_thread_owners.get(thread_id)
        if owner and label in labels and owner != labels[label].user_id:
            other = by_user_id.get(owner, f"user id {short(owner)}")
            violations.append(Violation("DB rows stay in own threads", (
                f"a {table} row of {label} was written into {other}'s thread {short(thread_id)} "
                "(backend DB)")))
    return RuleResult("DB rows stay in own threads", len(users), len(obs.db_row_threads), violations)


def sessions_belong_to_their_user(users: Sequence[TestUser], obs: Observations) -> RuleResult:
    """Redis session records: key user id == field user_id == a connected user."""
    by_user_id = {u.user_id: u.label for u in users if u.user_id}
    violations: list[Violation] = []
    checked = 0
    for record in obs.sessions:
        parts = record.key.split(":")
        key_user = parts[1] if len(parts) >= 3 else ""
        field_user = str(record.fields.get("user_id", ""))
        if key_user not in by_user_id and field_user not in by_user_id:
            continue  # another suite's user (pabot): not ours to judge
        checked += 1
        key_label = by_user_id.get(key_user, f"user id {short(key_user)}")
        if field_user != key_user:
            field_label = by_user_id.get(field_user, f"user id {short(field_user)}")
            violations.append(Violation("sessions belong to their user", (
                f"Redis session {record.key} of {key_label} records user_id of {field_label}")))
        elif obs.connected_user_ids is None:
            # never judge the rule on half the evidence: without the registry's answer it would pass vacuously
            raise CrosstalkError(
                f"Cannot judge Redis session {record.key} of {key_label}: nobody said which users hold an "
                "open connection (connected_user_ids is None; ask crosstalk.registry.open_user_ids()).")
        elif key_user not in obs.connected_user_ids:
            violations.append(Violation("sessions belong to their user", (
                f"Redis session {record.key} of {key_label} exists but {key_label} has no open connection")))
    return RuleResult("sessions belong to their user", len(users), checked, violations)


RULES: dict[str, Callable[[Sequence[TestUser], Observations], RuleResult]] = {
    "thread ids unique per user": thread_ids_unique,
    "tokens and jti unique": tokens_unique,
    "events reach only their user": events_reach_only_their_user,
    "canaries do not leak": canaries_do_not_leak,
    "REST lists only own threads": rest_lists_only_own_threads,
    "DB rows stay in own threads": rows_stay_in_own_threads,
    "sessions belong to their user": sessions_belong_to_their_user,
}


def check_users(users: Sequence[TestUser]) -> None:
    """Bad input fails with one line: the oracle needs distinct labels and canaries."""
    if not users:
        raise ValueError("No users given: pass the test users to check, e.g. Check Isolation  @{USERS}.")
    labels = [u.label for u in users]
    if len(set(labels)) != len(labels):
        raise ValueError(f"User labels must be distinct, got {labels}.")
    canaries = [u.canary for u in users]
    if len(set(canaries)) != len(canaries):
        raise ValueError(
            "Two users share a canary: create users with the Auth library, which makes them unique."
        )


def run_rules(
    users: Sequence[TestUser], obs: Observations | None = None, rules: Iterable[str] | None = None
) -> list[RuleResult]:
    users = list(users)
    check_users(users)
    obs = obs or Observations()
    names = list(rules) if rules is not None else list(RULES)
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise ValueError(f"Unknown isolation rule(s) {unknown}; known rules: {', '.join(RULES)}.")
    return [RULES[name](users, obs) for name in names]


def failure_message(results: Sequence[RuleResult], cap: int = MAX_LISTED) -> str | None:
    """One message for all violations (capped), or None when every rule passed."""
    violations = [v for r in results for v in r.violations]
    if not violations:
        return None
    if len(violations) == 1:
        return f"Isolation violated: {violations[0]}"
    listed = "; ".join(str(v) for v in violations[:cap])
    more = f"; … and {len(violations) - cap} more" if len(violations) > cap else ""
    return f"Isolation violated {len(violations)} times: {listed}{more}"


def summary_rows(results: Sequence[RuleResult]) -> list[list[Any]]:
    return [[r.rule, r.users, r.checked, len(r.violations)] for r in results]


def attribute_key(key: str, users: Sequence[TestUser]) -> TestUser | None:
    """The user whose id appears in a Redis key (every user-scoped key carries it)."""
    for user in users:
        if user.user_id and user.user_id in key:
            return user
    return None


def value_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def row_text(row: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in row.items()}, default=str, sort_keys=True)


# ---------------------------------------------------------------- round statistics
@dataclass
class RoundStats:
    """Latency (seconds), throughput and fairness of one round of chat runs."""

    runs: int
    users: int
    mean: float
    median: float
    p95: float
    max: float
    throughput: float  # completed runs per second, first send to last completion
    fairness: float  # Jain's index of the users' mean latencies
    wall: float = 0.0  # seconds from the first send to the last completion


def round_stats(latencies: Mapping[str, Sequence[float]], wall_seconds: float,
                fairness_floor: float = FAIRNESS_LATENCY_FLOOR_S) -> RoundStats:
    """Statistics of runs grouped by user label, over ``wall_seconds`` from first send to last completion.

    Fairness is Jain's index of the users' mean latencies, each counted as at least ``fairness_floor`` s.
    """
    flat = [x for values in latencies.values() for x in values]
    if not flat:
        raise ValueError("No run completed, so there is no latency to measure.")
    per_user = [sum(v) / len(v) for v in latencies.values() if v]
    ordered = sorted(flat)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return RoundStats(
        runs=len(flat), users=len(per_user), mean=sum(flat) / len(flat), median=median,
        p95=percentile(flat, 95), max=ordered[-1],
        throughput=len(flat) / wall_seconds if wall_seconds > 0 else float("inf"),
        fairness=jain_index(per_user, fairness_floor), wall=wall_seconds,
    )
