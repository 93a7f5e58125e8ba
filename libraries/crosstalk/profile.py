"""The target profile: everything the platform contract leaves open, declared per target.

A profile is one YAML file (``resources/profiles/<name>.yaml``; the reference
platform's, ``reference.yaml``, is the default).  It names

- ``events``: the platform's event type names and where each field Crosstalk
  needs sits in a frame (run id, thread id, seq, user id, tool call id, the
  handoff field, the answer), as dotted paths;
- ``answers``: how an answer is recognised as the asker's own: ``quote`` (the
  answer quotes the message), ``canary_echo`` (each message asks for a token to
  be repeated, the answer must carry it) or ``none`` (not recognisable: checks
  that need it skip);
- ``stores``: the ownership query per logical view (``threads``, ``messages``,
  ``runs``) as SQL on the backend database with the platform's own tables and
  types, returning the canonical column names ``user_id`` and ``thread_id``;
  ``%(user_ids)s`` and ``%(thread_ids)s`` are bound to lists of text; and the
  workspace/analytics queries of the cross-service transaction;
- ``redis``: key patterns per user (``{user_id}``), the session pattern;
- ``counters``: what ``message_count`` counts (``all`` messages or ``user``
  messages only);
- ``limits``: frame size, rate, burst, allowed origins, issuer, audience;
- ``analytics``: the analytics database name on the backend's server.

Libraries read the profile through :func:`current`, never hard-coded names.
Incoming frames are turned into the canonical shape once, on arrival
(:meth:`Profile.canonical_event`), so every check downstream speaks one shape;
the raw frame stays in the transcript.
"""

from __future__ import annotations

import copy
import enum
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import context
from .paths import source_checkout

# resources/profiles/ of the checkout; installed, crosstalk/resources/profiles/ (package data)
PROFILES_DIR = (_checkout / "resources" / "profiles" if (_checkout := source_checkout())
                else Path(__file__).resolve().parent / "resources" / "profiles")
DEFAULT_PROFILE = "reference"
ENV_VAR = "CROSSTALK_PROFILE"
CANONICAL_TYPES = (
    "agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed", "agent_error",
    "error",
)
CANONICAL_FIELDS = (
    "type", "run_id", "thread_id", "client_message_id", "user_id", "seq", "timestamp", "payload",
    "payload.tool_call_id", "payload.handoff_from", "payload.response", "payload.result", "payload.agent",
    "payload.message",
)
VIEWS = ("threads", "messages", "runs")


class ProfileError(ValueError):
    """A profile file that cannot be used; the message is one line saying what to fix."""

    ROBOT_SUPPRESS_NAME = True


class AnswerRecognition(enum.Enum):
    """How an answer is recognised as the asker's own."""

    QUOTE = "quote"
    CANARY_ECHO = "canary_echo"
    NONE = "none"


class MessageCount(enum.Enum):
    """What a thread's ``message_count`` counts."""

    ALL = "all"
    USER = "user"


_MISSING = object()


def _get(data: Any, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def _set(data: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        child = data.get(part)
        if not isinstance(child, dict):
            return
        data = child
    data.setdefault(last, value)


def walk_values(value: Any) -> Iterator[str]:
    """Every scalar anywhere in a JSON value (dict keys and values, list items), as text.

    Example:
    >>> list(walk_values({"earlier": [{"text": "hi CANARY-1"}], "n": 2}))
    ['earlier', 'text', 'hi CANARY-1', 'n', '2']
    """
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from walk_values(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from walk_values(item)
    elif value is not None:
        yield str(value)


@dataclass
class Profile:
    """One target's declared shapes, names, semantics and limits (see the module docstring)."""

    name: str
    source: str
    event_types: dict[str, str]  # canonical -> platform
    event_fields: dict[str, str]  # canonical path -> platform path
    answer_recognition: AnswerRecognition
    echo_request: str
    ownership: dict[str, str]  # view -> SQL
    workspace_queries: dict[str, str]
    redis_session_pattern: str
    redis_user_patterns: list[str]
    message_count: MessageCount
    limits: dict[str, Any]
    analytics_database: str
    raw: dict = field(repr=False, default_factory=dict)
    explicit: bool = False  # named by PROFILE (or by the started platform), not the implicit default
    cleanup_sql: dict[str, list[str]] | None = None  # store variable -> DELETE statements (crosstalk.cleanup)
    user_ids_sql: str | None = None  # the run's user ids as text, by email prefix (crosstalk.cleanup)
    rewrite: list[tuple[str, str]] = field(default_factory=list)  # literal SQL rewrites, applied first
    rename: dict[str, str] = field(default_factory=dict)  # reference table/column name -> the platform's
    rename_skip: list[str] = field(default_factory=list)  # statements naming these tables are left alone
    redis_context: str = "ctx:{user_id}:{thread_id}"

    def __post_init__(self) -> None:
        import re

        self._rename_re = re.compile(r"\b(" + "|".join(map(re.escape, self.rename)) + r")\b") if self.rename \
            else None
        self._skip_re = re.compile(r"\b(" + "|".join(map(re.escape, self.rename_skip)) + r")\b") \
            if self.rename_skip else None
        self._type_to_canonical = {v: k for k, v in self.event_types.items() if v != k}
        self._moved = [(c, p) for c, p in self.event_fields.items() if c != p]
        self.identity = not self._type_to_canonical and not self._moved

    # ---------------------------------------------------------------- events
    def canonical_event(self, data: dict[str, Any]) -> dict[str, Any]:
        """The frame with every canonical name present (the platform's own names are kept too).

        Example:
        | ${event} = | Evaluate | $profile.canonical_event({"run": "r1", "sequence": 1}) |
        """
        if self.identity or not isinstance(data, dict):
            return data
        out = dict(data)
        if isinstance(out.get("payload"), dict):
            out["payload"] = dict(out["payload"])
        kind = out.get("type")
        if kind in self._type_to_canonical:
            out["type"] = self._type_to_canonical[kind]
            out.setdefault("platform_type", kind)
        for canonical, platform in self._moved:
            value = _get(data, platform, _MISSING)
            if value is not _MISSING:  # present, even as null (an agent_error before its thread existed)
                _set(out, canonical, value)
        return out

    def event_type(self, canonical: str) -> str:
        """The platform's name for a canonical event type (for messages shown to people)."""
        return self.event_types.get(canonical, canonical)

    def field_name(self, canonical: str) -> str:
        """The platform's path of a canonical field, e.g. ``payload.tool_call_id`` -> ``payload.call_id``."""
        return self.event_fields.get(canonical, canonical)

    # ---------------------------------------------------------------- answers
    def message_content(self, content: str, token: str) -> str:
        """What to send for ``content`` so the answer can be recognised (adds the echo request if any).

        Example:
        | ${text} = | Evaluate | $profile.message_content("What does it cost?", "CANARY-x") |
        """
        if self.answer_recognition is AnswerRecognition.CANARY_ECHO:
            return f"{content} {self.echo_request.format(token=token)}"
        return content

    def answer_evidence(self, content: str, token: str) -> str | None:
        """The text an answer to ``content`` must contain to be the asker's own; None: not recognisable."""
        if self.answer_recognition is AnswerRecognition.QUOTE:
            return content
        if self.answer_recognition is AnswerRecognition.CANARY_ECHO:
            return token
        return None

    # ---------------------------------------------------------------- counters, redis
    def expected_message_count(self, user_messages: int, agent_messages: int) -> int:
        """What ``message_count`` should read after that many user and agent messages."""
        if self.message_count is MessageCount.USER:
            return user_messages
        return user_messages + agent_messages

    def sql(self, statement: str) -> str:
        """A statement in the reference's tables and columns, in the platform's own (``stores.rename``).

        Literal rewrites (``stores.rewrite``) come first; statements naming a table of
        ``stores.rename_skip`` (tables the platform keeps under the reference's names) are
        left alone.  The reference profile changes nothing.

        Example:
        | ${sql} = | Evaluate | $profile.sql("SELECT 1 FROM threads WHERE user_id = %s") |
        """
        for old, new in self.rewrite:
            statement = statement.replace(old, new)
        if self._rename_re is None or (self._skip_re is not None and self._skip_re.search(statement)):
            return statement
        return self._rename_re.sub(lambda m: self.rename[m.group(1)], statement)

    def context_key(self, user_id: str, thread_id: str) -> str:
        """The Redis key of the agent context of one user's thread (``redis.context``)."""
        return self.redis_context.format(user_id=user_id, thread_id=thread_id)

    def background_key_kinds(self) -> list[str]:
        """Key shapes of one user (``{u}`` user id, ``{n}`` a number) after ``redis.user_keys`` (seeding)."""
        kinds = []
        for pattern in self.redis_user_patterns:
            shape = pattern.replace("{user_id}", "{u}")
            kinds.append(shape.replace("*", "{n}") if "*" in shape else shape + "{n}")
        return kinds

    def session_pattern(self, user_id: str) -> str:
        """The Redis SCAN pattern of one user's session records."""
        return self.redis_session_pattern.format(user_id=user_id)

    def is_session_key(self, key: str) -> bool:
        prefix = self.redis_session_pattern.split("{user_id}", 1)[0]
        return key.startswith(prefix)

    @property
    def variables(self) -> dict[str, str]:
        """Target variables this profile declares, for the context to fill where no variable gave one.

        Limits become ``MAX_FRAME_BYTES``, ``OVERSIZED_FRAME_BYTES`` (2 x the frame limit)
        and ``FLOOD_SIZE`` (3 x the burst, at least 60); issuer and audience become
        ``JWT_ISSUER`` and ``JWT_AUDIENCE``.  Empty for the implicit default profile: the
        reference's limits are never assumed of another platform.
        """
        if not self.explicit:
            return {}
        out: dict[str, str] = {}
        frame, burst = self.limits.get("max_frame_bytes"), self.limits.get("rate_limit_burst")
        if frame:
            out["MAX_FRAME_BYTES"], out["OVERSIZED_FRAME_BYTES"] = str(int(frame)), str(2 * int(frame))
        if burst:
            out["FLOOD_SIZE"] = str(max(60, 3 * int(burst)))
        for name, variable in (("issuer", "JWT_ISSUER"), ("audience", "JWT_AUDIENCE")):
            if self.limits.get(name):
                out[variable] = str(self.limits[name])
        return out

    def limit(self, name: str, default: Any = None) -> Any:
        value = self.limits.get(name)
        return default if value is None else value

    def describe(self) -> str:
        """One line for logs and report metadata."""
        return f"{self.name} ({self.source}; answers: {self.answer_recognition.value}, " \
               f"message_count counts {self.message_count.value} messages)"


def _require(data: dict, path: str, source: str, kind: type | tuple = str) -> Any:
    value = _get(data, path)
    if value is None or not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise ProfileError(
            f"Profile {source}: '{path}' is missing or not a {getattr(kind, '__name__', kind)}: "
            f"add it (see resources/profiles/reference.yaml)."
        )
    return value


def _enum(enum_type: type[enum.Enum], value: Any, path: str, source: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise ProfileError(f"Profile {source}: '{path}' is {value!r}; use one of {allowed}.") from None


def from_dict(data: dict, source: str = "<dict>") -> Profile:
    """Build a profile from its parsed YAML; a missing or wrong entry is one clear error."""
    if not isinstance(data, dict):
        raise ProfileError(
            f"Profile {source} is not a YAML mapping: start from resources/profiles/reference.yaml."
        )
    types = dict(_get(data, "events.types") or {})
    unknown = sorted(set(types) - set(CANONICAL_TYPES))
    if unknown:
        raise ProfileError(
            f"Profile {source}: unknown event types {unknown}; known: {list(CANONICAL_TYPES)}."
        )
    fields = dict(_get(data, "events.fields") or {})
    unknown = sorted(set(fields) - set(CANONICAL_FIELDS))
    if unknown:
        raise ProfileError(
            f"Profile {source}: unknown event fields {unknown}; known: {list(CANONICAL_FIELDS)}."
        )
    recognition = _enum(
        AnswerRecognition, _get(data, "answers.recognition") or "quote", "answers.recognition", source
    )
    echo = str(_get(data, "answers.echo_request") or "")
    if recognition is AnswerRecognition.CANARY_ECHO and "{token}" not in echo:
        raise ProfileError(f"Profile {source}: answers.echo_request must contain {{token}} for canary_echo.")
    ownership = _require(data, "stores.ownership", source, dict)
    missing = [view for view in VIEWS if not isinstance(ownership.get(view), str)]
    if missing:
        raise ProfileError(f"Profile {source}: stores.ownership lacks SQL for {missing}.")
    session = _require(data, "redis.session", source)
    if "{user_id}" not in session:
        raise ProfileError(f"Profile {source}: redis.session must contain {{user_id}}.")
    return Profile(
        name=str(data.get("name") or Path(source).stem),
        source=source,
        event_types={t: str(types.get(t, t)) for t in CANONICAL_TYPES},
        event_fields={f: str(fields.get(f, f)) for f in CANONICAL_FIELDS},
        answer_recognition=recognition,
        echo_request=echo,
        ownership={view: str(ownership[view]) for view in VIEWS},
        workspace_queries=dict(_get(data, "stores.workspaces") or {}),
        redis_session_pattern=session,
        redis_user_patterns=list(_get(data, "redis.user_keys") or [session]),
        message_count=_enum(MessageCount, _get(data, "counters.message_count") or "all",
                            "counters.message_count", source),
        limits=dict(data.get("limits") or {}),
        analytics_database=str(_get(data, "analytics.database") or "analytics"),
        cleanup_sql={str(k): [str(s) for s in v] for k, v in (_get(data, "stores.cleanup") or {}).items()}
        or None,
        user_ids_sql=_get(data, "stores.user_ids"),
        rewrite=[(str(a), str(b)) for a, b in (_get(data, "stores.rewrite") or [])],
        rename={str(k): str(v) for k, v in (_get(data, "stores.rename") or {}).items()},
        rename_skip=[str(t) for t in (_get(data, "stores.rename_skip") or [])],
        redis_context=str(_get(data, "redis.context") or "ctx:{user_id}:{thread_id}"),
        raw=copy.deepcopy(data),
    )


def resolve_path(name_or_path: str) -> Path:
    """A profile name (``variant``) or a path to a YAML file, as a path that exists."""
    text = str(name_or_path).strip()
    candidate = Path(text).expanduser()
    if candidate.suffix in (".yaml", ".yml", ".json") or os.sep in text:
        if not candidate.is_file():
            raise ProfileError(f"PROFILE {text}: no such file; give a path to a YAML file or a name in "
                               f"{PROFILES_DIR}.")
        return candidate
    named = PROFILES_DIR / f"{text}.yaml"
    if not named.is_file():
        names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ProfileError(f"PROFILE {text}: unknown profile; use one of {names} or a path to a YAML file.")
    return named


def load(name_or_path: str = DEFAULT_PROFILE) -> Profile:
    """Load a profile by name (``resources/profiles/<name>.yaml``) or path.

    Example:
    | ${profile} = | Evaluate | crosstalk.profile.load("variant") | modules=crosstalk.profile |
    """
    path = resolve_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ProfileError(f"Profile {path}{where} is not valid YAML: {problem}.") from None
    return from_dict(data, str(path))


_current: Profile | None = None


def activate(name_or_path: str | Profile | None) -> Profile:
    """Make a profile the one every library reads (None/empty: the reference profile)."""
    global _current
    if isinstance(name_or_path, Profile):
        _current = name_or_path
    else:
        _current = load(str(name_or_path).strip() if name_or_path else DEFAULT_PROFILE)
    return _current


def current() -> Profile:
    """The active profile: the target context's (``PROFILE``), else ``$CROSSTALK_PROFILE``, else reference."""
    global _current
    ctx = context.peek()
    if ctx is not None and isinstance(ctx.profile, Profile):
        return ctx.profile
    if _current is None:
        _current = load(os.environ.get(ENV_VAR) or DEFAULT_PROFILE)
    return _current


def _load_for_context(name_or_path: str) -> Profile:
    """The target context's PROFILE loader: a bad profile is a one-line configuration error."""
    try:
        loaded = activate(name_or_path or None)
    except ProfileError as exc:
        raise context.ConfigurationError(str(exc)) from None
    loaded.explicit = bool(name_or_path)
    return loaded


context.PROFILE_LOADER = _load_for_context
