"""The deterministic agent: triage picks a specialist by keywords, the specialist looks up
the caller's earlier messages in the thread and answers quoting them.  No model weights."""

from __future__ import annotations

import re

SPECIALISTS: dict[str, tuple[str, ...]] = {
    "cost": ("cost", "price", "pricing", "bill", "billing", "budget", "spend", "invoice", "expensive",
             "cheap", "money", "discount"),
    "security": ("security", "secure", "password", "token", "vulnerab", "attack", "breach", "leak",
                 "auth", "encrypt", "permission", "injection"),
    "performance": ("performance", "slow", "latency", "fast", "speed", "throughput", "memory", "cpu",
                    "timeout", "scal", "load"),
}
TOOL = "history_lookup"
FAIL_DIRECTIVE = "[[fail]]"
SLOW_RE = re.compile(r"\[\[slow:(\d{1,6})\]\]")


def choose_specialist(content: str) -> str:
    lowered = content.lower()
    for name, words in SPECIALISTS.items():
        if any(word in lowered for word in words):
            return name
    return "general"


def step_delay_ms(content: str, default_ms: int) -> int:
    match = SLOW_RE.search(content)
    return int(match.group(1)) if match else default_ms


def wants_failure(content: str) -> bool:
    return FAIL_DIRECTIVE in content


def compose_answer(specialist: str, content: str, history: list[str]) -> str:
    if history:
        earlier = " | ".join(f'"{text}"' for text in history)
        found = f"Earlier in this thread you said: {earlier}."
    else:
        found = "This is the first message in this thread."
    return f'[{specialist} specialist] You said: "{content}". {found}'
