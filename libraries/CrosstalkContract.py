"""Robot Framework library: does a platform meet the contract?  Rules, documents and capabilities."""

from __future__ import annotations

from enum import Enum

from crosstalk import context, testhooks
from crosstalk.conformance import Target, run_rules
from crosstalk.contract import ContractError, frame_contract
from crosstalk.htmllog import table
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library
from robot.libraries.BuiltIn import BuiltIn


class RuleArea(Enum):
    """A group of contract rules (ids AUTH-n, API-n, WS-n in reference_platform/README.md)."""

    auth = "auth"
    backend = "backend"
    websocket = "websocket"


@library(scope="SUITE", version=VERSION, auto_keywords=False)
class CrosstalkContract:
    """Checks the platform under test against the normative contract.

    Rules are the MUST/SHOULD statements of ``reference_platform/README.md``; each is
    checked over real HTTP and WebSocket connections, every JSON answer is validated
    against ``docs/contract/openapi.yaml`` and every frame against
    ``docs/contract/asyncapi.yaml`` (or ``${FRAME_SCHEMA}``).  A broken MUST fails the
    test; a broken SHOULD is a warning.  The log shows one table per area.
    """

    def _target(self) -> Target:
        ctx = context.current()
        setting = ctx.values.get("FRAME_SCHEMA") or None
        try:
            frames = frame_contract(setting)
        except ContractError as exc:
            raise AssertionError(f"FRAME_SCHEMA: {exc}") from None
        return Target(ctx.get("AUTH_URL"), ctx.get("BACKEND_URL"), ctx.get("WS_URL"),
                      prefix=ctx.run_prefix or "ct-", frames=frames, on_user=ctx.record_user)

    @keyword
    def contract_rules_should_hold(self, area: RuleArea) -> str:
        """Checks every rule of ``area``, logs a table of rule, level, verdict and evidence, and fails
        naming every broken MUST rule.  Returns a one-line summary.

        Example:
        | Contract Rules Should Hold | auth |
        """
        target = self._target()
        results = run_rules(target, area.value)
        rows = [(r.rule.rule_id, r.rule.level, "met" if r.ok else "BROKEN", r.rule.text, r.evidence,
                 f"{r.seconds * 1000:.0f}") for r in results]
        logger.info(table(("rule", "level", "verdict", "rule text", "evidence", "ms"), rows,
                          f"contract rules: {area.value}"), html=True)
        must = [r for r in results if not r.ok and r.rule.level == "MUST"]
        for r in results:
            if not r.ok and r.rule.level != "MUST":
                logger.warn(f"{r.rule.rule_id} ({r.rule.level}) not met: {r.evidence}")
        met = sum(1 for r in results if r.ok)
        summary = f"{met} of {len(results)} {area.value} rules met"
        BuiltIn().set_test_message(summary, append=True)
        if must:
            raise AssertionError(
                f"{len(must)} {area.value} MUST rule(s) broken: "
                + " | ".join(f"{r.rule.rule_id} {r.rule.text}: {r.evidence}" for r in must)
            )
        return summary

    @keyword
    def list_platform_capabilities(self) -> dict:
        """Logs a table of every optional capability: available or not, and why; returns it as a dict.

        Also lists what the platform advertises in ``GET /health`` ``capabilities``
        (failure injection names, Prometheus metrics path).

        Example:
        | ${caps} = | List Platform Capabilities |
        """
        ctx = context.current()
        rows, found = [], {}
        for capability, state in ctx.capabilities.items():
            found[capability.value] = state.available
            rows.append((capability.tag, "yes" if state.available else "no", state.detail or state.reason))
        for name in ("AUTH_URL", "BACKEND_URL"):
            advertised = testhooks.capabilities(ctx.get(name))
            rows.append((f"{name} /health capabilities", "advertised" if advertised else "none",
                         ", ".join(f"{k}: {v}" for k, v in advertised.items()) or "-"))
        logger.info(table(("capability", "available", "how / what would enable it"), rows,
                          "optional capabilities of the platform under test"), html=True)
        available = sorted(k for k, v in found.items() if v)
        BuiltIn().set_test_message(
            f"available: {', '.join(available) or 'none'}; absent: "
            f"{', '.join(sorted(k for k, v in found.items() if not v)) or 'none'}", append=True)
        return found
