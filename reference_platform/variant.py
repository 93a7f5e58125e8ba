"""Variant mode: the same platform, with everything the contract leaves open done differently.

``python -m reference_platform --variant`` (or ``REFPLAT_VARIANT=1``) changes

- table and column names (``conversations``, ``chat_messages``, ``agent_runs``,
  ``accounts``, ``owner_id``, ``account_id``) and id types (user ids are ``text``),
  by translating each SQL statement on its way to the pool, so the service code is
  the reference's own;
- Redis key names (``presence:``, ``memory:``, ``throttle:``, ``denylist:``, ``threadlist:``);
- event type and field names (``agent_reasoning``, ``tool_call_started``,
  ``tool_call_finished``; ``run``, ``conversation_id``, ``account_id``, ``sequence``,
  ``payload.call_id``, ``payload.delegated_by``, ``payload.text``);
- what ``message_count`` counts: the user's messages only;
- limits, issuer, audience, origins, database names (``identity``, ``chat``,
  ``usage_analytics``) and the bind address (``0.0.0.0``; clients still use 127.0.0.1);
- the agent, which behaves like a model rather than a script: seeded
  non-deterministic wording, a variable number of thinking events, two tool
  calls in parallel (both ``tool_call_started`` before their completions, in
  either order), heavy-tailed step latency, earlier messages returned as objects,
  and the asker's reference code in the answer only when the message asks for it
  to be repeated.

``resources/profiles/variant.yaml`` describes all of it for Crosstalk.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from typing import Any

ENV_VAR = "REFPLAT_VARIANT"
PROFILE = "variant"
# launcher defaults in variant mode (options given explicitly still win)
DEFAULTS = {
    "host": "0.0.0.0",
    "auth_db": "identity",
    "backend_db": "chat",
    "analytics_db": "usage_analytics",
    "max_frame_bytes": 32768,
    "rate_limit": 10.0,
    "rate_burst": 25,
    "allowed_origins": "https://chat.variant.test,http://127.0.0.1",
    "issuer": "variant-identity",
    "audience": "variant-chat-api",
}

_enabled = False
_seed = 0


def enable(on: bool, seed: int = 0) -> None:
    """Switch variant mode on in this process (each service calls it at start)."""
    global _enabled, _seed
    _enabled, _seed = bool(on), seed


def on() -> bool:
    return _enabled


# ------------------------------------------------------------------ names
WORDS = {
    "auth": {"users": "accounts", "user_id": "account_id", "refresh_tokens": "refresh_grants"},
    "backend": {"threads": "conversations", "thread_id": "conversation_id", "messages": "chat_messages",
                "runs": "agent_runs", "user_id": "owner_id"},
}
# user ids are text in variant mode
TYPES = {"auth": [("account_id uuid", "account_id text")], "backend": [("owner_id uuid", "owner_id text")]}

REDIS_KEYS = {
    "session": ("session:{}:{}", "presence:{}:{}"),
    "ctx": ("ctx:{}:{}", "memory:{}:{}"),
    "ctx_shared": ("ctx:latest", "memory:latest"),
    "ratelimit": ("ratelimit:{}", "throttle:{}"),
    "revoked": ("revoked:{}", "denylist:{}"),
    "threads": ("cache:threads:{}", "threadlist:{}"),
    "threads_gen": ("cache:threads-gen:{}", "threadlist-gen:{}"),
}


def key(kind: str, *parts: object) -> str:
    """The Redis key of ``kind`` in the active mode, e.g. ``key("session", user, conn)``."""
    reference, other = REDIS_KEYS[kind]
    return (other if _enabled else reference).format(*parts)


EVENT_TYPES = {"agent_thinking": "agent_reasoning", "tool_executing": "tool_call_started",
               "tool_completed": "tool_call_finished"}
EVENT_FIELDS = {"run_id": "run", "thread_id": "conversation_id", "user_id": "account_id", "seq": "sequence"}
PAYLOAD_FIELDS = {"tool_call_id": "call_id", "handoff_from": "delegated_by", "response": "text"}


def event(frame: dict[str, Any]) -> dict[str, Any]:
    """An event frame with the variant's type and field names (unchanged outside variant mode)."""
    if not _enabled:
        return frame
    out = {EVENT_FIELDS.get(k, k): v for k, v in frame.items()}
    out["type"] = EVENT_TYPES.get(frame["type"], frame["type"])
    payload = frame.get("payload")
    if isinstance(payload, dict):
        out["payload"] = {PAYLOAD_FIELDS.get(k, k): v for k, v in payload.items()}
    return out


class Translator:
    """Rewrites the reference's SQL into the variant's names and types."""

    def __init__(self, database: str):
        self.words = WORDS[database]
        self.types = TYPES[database]
        self.pattern = re.compile(r"\b(" + "|".join(map(re.escape, self.words)) + r")\b")
        self.reverse = {v: k for k, v in self.words.items()}
        self._cache: dict[str, str] = {}

    def sql(self, text: str) -> str:
        done = self._cache.get(text)
        if done is None:
            done = self.pattern.sub(lambda m: self.words[m.group(1)], text).replace("::uuid", "::text")
            for old, new in self.types:
                done = done.replace(old, new)
            if len(self._cache) < 512:
                self._cache[text] = done
        return done

    @staticmethod
    def args(args: tuple) -> tuple:
        return tuple(str(a) if isinstance(a, uuid.UUID) else a for a in args)

    def row(self, record: Any) -> Any:
        return None if record is None else Row(record, self.words)


class Row:
    """An asyncpg record read by the reference's column names."""

    def __init__(self, record: Any, words: dict[str, str]):
        self._record, self._words = record, words

    def __getitem__(self, name: Any) -> Any:
        if isinstance(name, str) and name not in self._record:
            name = self._words.get(name, name)
        return self._record[name]

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        return list(self._record.keys())


class _Queries:
    def __init__(self, target: Any, translator: Translator):
        self._target, self._t = target, translator

    async def fetch(self, sql: str, *args: Any, **kw: Any) -> list:
        return [self._t.row(r) for r in await self._target.fetch(self._t.sql(sql), *self._t.args(args), **kw)]

    async def fetchrow(self, sql: str, *args: Any, **kw: Any) -> Any:
        return self._t.row(await self._target.fetchrow(self._t.sql(sql), *self._t.args(args), **kw))

    async def fetchval(self, sql: str, *args: Any, **kw: Any) -> Any:
        return await self._target.fetchval(self._t.sql(sql), *self._t.args(args), **kw)

    async def execute(self, sql: str, *args: Any, **kw: Any) -> Any:
        return await self._target.execute(self._t.sql(sql), *self._t.args(args), **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _Acquire:
    def __init__(self, pool: Any, translator: Translator):
        self._context, self._t = pool.acquire(), translator

    async def __aenter__(self) -> _Queries:
        return _Queries(await self._context.__aenter__(), self._t)

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._context.__aexit__(*exc)


class Pool(_Queries):
    """An asyncpg pool whose statements are translated (see :class:`Translator`)."""

    def acquire(self) -> _Acquire:
        return _Acquire(self._target, self._t)


def wrap_pool(pool: Any, database: str) -> Any:
    """The pool itself outside variant mode, else a translating wrapper."""
    return Pool(pool, Translator(database)) if _enabled else pool


# the agent's answer does not count in message_count (only the user's messages do)
FINISH_RUN = """
WITH m AS (INSERT INTO messages (message_id, thread_id, user_id, role, content, run_id, client_message_id)
           VALUES ($1, $2, $3, 'agent', $4, $5, $6))
UPDATE runs SET status = 'completed', agent = $7, completed_at = now() WHERE run_id = $5
"""

# ------------------------------------------------------------------ the agent
REPEAT_RE = re.compile(r"\brepeat\b[^:\n]{0,80}:\s*(\S+)", re.IGNORECASE)
OPENERS = ("Sure.", "Happy to help.", "Good question.", "Let me look at that.", "Here is what I found.",
           "Thanks for asking.")
BODIES = {
    "cost": ("Your plan's price depends on the seats you use.", "Billing is monthly and prorated.",
             "The budget view shows what you spend per project."),
    "security": ("Tokens expire after a short while and can be revoked.",
                 "Passwords are hashed with argon2id.", "Access is checked on every request."),
    "performance": ("Latency mostly comes from the model, not the network.",
                    "The platform scales out per user.", "Throughput grows with the number of workers."),
    "general": ("I can help with plans, security and performance.", "Tell me more about what you need.",
                "That depends on your setup."),
}
THOUGHTS = ("reading the question", "deciding who should answer", "checking the request", "weighing options",
            "looking for context")
SIDE_TOOLS = ("knowledge_search", "policy_check")


def rng_for(run_number: int) -> random.Random:
    return random.Random(_seed * 1_000_003 + run_number)


def step_seconds(rng: random.Random, step_ms: int) -> float:
    """Heavy-tailed (Pareto) step latency, capped so suites stay fast: mostly ~step_ms, now and then 12x."""
    return step_ms * min(rng.paretovariate(1.6), 12.0) / 1000


def compose_answer(rng: random.Random, specialist: str, content: str, history: list[str]) -> str:
    opener, parts = rng.choice(OPENERS), [rng.choice(BODIES.get(specialist, BODIES["general"]))]
    if history:
        parts.append(rng.choice((
            "I also looked at what you wrote earlier in this conversation.",
            f"You have {len(history)} earlier message(s) here, which I took into account.",
        )))
    tokens = REPEAT_RE.findall(content)
    if tokens:
        parts.append(rng.choice(("As requested: {}.", "Your reference code: {}.", "Repeating it back: {}."))
                     .format(", ".join(tokens)))
    rng.shuffle(parts)
    return " ".join([opener, *parts])


async def run_agent(service: Any, run: Any, agent: Any) -> None:
    """One run of the variant agent, through the service's own begin/emit/history/fail steps."""
    rng = rng_for(run.number)

    async def step() -> None:
        if run.step_ms:
            await asyncio.sleep(step_seconds(rng, run.step_ms))

    specialist = "triage"
    if not await service._begin(run):
        await service._send_error(run.conn, "thread_not_found", "thread not found", run.client_message_id)
        return
    await service._emit(run, "agent_started", {"agent": "triage", "model": "variant-sim-1"})
    specialist = agent.choose_specialist(run.content)
    for _ in range(rng.randint(1, 3)):
        await step()
        await service._emit(run, "agent_thinking", {"agent": "triage", "thought": rng.choice(THOUGHTS)})
    await step()
    await service._emit(run, "agent_thinking", {
        "agent": specialist, "handoff_from": "triage", "thought": f"taking over as {specialist} specialist",
    })
    for _ in range(rng.randint(0, 2)):
        await step()
        await service._emit(run, "agent_thinking", {"agent": specialist, "thought": rng.choice(THOUGHTS)})
    await step()
    calls = [(f"call_{uuid.uuid4().hex[:12]}", tool) for tool in (agent.TOOL, rng.choice(SIDE_TOOLS))]
    for call_id, tool in calls:  # both start before either completes
        arguments = {"thread_id": run.thread_id} if tool == agent.TOOL else {"query": run.content[:40]}
        await service._emit(run, "tool_executing", {
            "agent": specialist, "tool": tool, "tool_call_id": call_id, "arguments": arguments,
        })
    history = await service._history(run)
    results = {
        agent.TOOL: {"earlier_messages": [{"role": "user", "text": text, "position": i}
                                          for i, text in enumerate(history, 1)]},
        "knowledge_search": {"documents": [{"title": "Plans and limits", "score": round(rng.random(), 3)}]},
        "policy_check": {"allowed": True, "checks": ["scope", "rate"]},
    }
    rng.shuffle(calls)
    for call_id, tool in calls:
        await step()
        await service._emit(run, "tool_completed", {
            "agent": specialist, "tool": tool, "tool_call_id": call_id, "result": results[tool],
        })
    await step()
    if agent.wants_failure(run.content):
        await service._fail(run, specialist, "the model gave up on purpose ([[fail]] directive)")
        return
    answer = compose_answer(rng, specialist, run.content, history)
    await service.pool.execute(
        FINISH_RUN, uuid.uuid4(), uuid.UUID(run.thread_id), uuid.UUID(run.conn.user_id), answer,
        uuid.UUID(run.run_id), run.client_message_id, specialist,
    )
    await service.redis.set(service._ctx_key(run), json.dumps([*history, run.content]), ex=3600)
    await service._emit(run, "agent_completed", {"agent": specialist, "response": answer})
