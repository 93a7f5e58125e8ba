"""The target context: one precedence rule for every variable, derived values, static capabilities."""

from __future__ import annotations

import os

import pytest
from crosstalk import context
from crosstalk.context import VARIABLES, Capability, build, resolve, static_capabilities

TARGET = {"AUTH_URL": "https://auth.example.test", "BACKEND_URL": "https://api.example.test"}


@pytest.mark.parametrize("name", [v.name for v in VARIABLES])
def test_variable_beats_crosstalk_env_beats_plain_env_for_every_variable(name):
    env = {f"CROSSTALK_{name}": "from-crosstalk-env", name: "from-plain-env"}
    assert resolve(name, {name: "from-variable"}, env).value == "from-variable"
    assert resolve(name, {}, env) == context.Resolved("from-crosstalk-env", f"CROSSTALK_{name}")
    plain = resolve(name, {}, {name: "from-plain-env"})
    if name in context.LEGACY_ENVIRONMENT:
        assert plain == context.Resolved("from-plain-env", name)
    else:
        assert plain.value == ""


def test_empty_variable_falls_through_to_the_environment():
    assert resolve("REDIS_URL", {"REDIS_URL": ""}, {"CROSSTALK_REDIS_URL": "redis://h"}).value == "redis://h"


def test_reference_values_are_the_last_resort():
    assert resolve("REDIS_URL", {}, {}, {"REDIS_URL": "redis://ref"}).source == "reference"
    assert resolve("REDIS_URL", {"REDIS_URL": "off"}, {}, {"REDIS_URL": "redis://ref"}).value == "off"


def test_a_target_is_configured_by_auth_or_backend_url():
    assert build(TARGET, {}).configured
    assert build({}, {"CROSSTALK_BACKEND_URL": "http://b"}).configured
    assert build({}, {"AUTH_URL": "http://a"}).configured  # back-compat plain env
    assert not build({}, {}).configured


def test_configured_target_never_takes_reference_values():
    ctx = build(TARGET, {}, reference={"REDIS_URL": "redis://ref", "JWT_PRIVATE_KEY": "/ref.pem"})
    assert ctx.get("REDIS_URL") == "" and ctx.get("JWT_PRIVATE_KEY") == ""
    assert not ctx.has(Capability.REDIS)


def test_stray_plain_env_does_not_redirect_the_reference_platform():
    ctx = build({}, {"REDIS_URL": "redis://stray"}, reference={"REDIS_URL": "redis://ref"})
    assert ctx.get("REDIS_URL") == "redis://ref"


def test_derived_values():
    given = {"BACKEND_DATABASE_URL": "postgresql://u:p@h/backend", "MAX_FRAME_BYTES": "1000"}
    ctx = build({**TARGET, **given}, {})
    assert ctx.get("WS_URL") == "wss://api.example.test/ws"
    assert ctx.get("ANALYTICS_DATABASE_URL") == "postgresql://u:p@h/analytics"
    assert ctx.get("OVERSIZED_FRAME_BYTES") == "1500"
    assert ctx.sources["WS_URL"] == "derived"


def test_run_prefix_is_generated_or_given():
    assert build(TARGET, {}).run_prefix.startswith("ct")
    assert build({**TARGET, "RUN_PREFIX": "nightly-"}, {}).run_prefix == "nightly-"


def test_only_urls_means_every_optional_capability_is_absent_with_the_variable_named():
    ctx = build(TARGET, {})
    for capability in Capability:
        assert not ctx.has(capability)
        for name in context.CAPABILITY_VARIABLES[capability]:
            if capability is Capability.ANALYTICS_DB:
                continue
            assert f"CROSSTALK_{name}" in ctx.reason(capability) or name in ctx.reason(capability)


def test_off_switches_a_capability_off_even_on_the_reference_platform():
    states = static_capabilities({"REDIS_URL": "off"}, reference=True)
    assert not states[Capability.REDIS].available
    assert states[Capability.REDIS].reason.startswith("REDIS_URL is off")


def test_each_database_is_its_own_capability():
    states = static_capabilities({"BACKEND_DATABASE_URL": "postgresql://h/b"}, reference=False)
    assert states[Capability.DB].available
    assert not states[Capability.AUTH_DB].available
    assert states[Capability.AUTH_DB].reason == "set AUTH_DATABASE_URL (CROSSTALK_AUTH_DATABASE_URL)"


def test_missing_for_names_the_first_absent_capability():
    ctx = build({**TARGET, "REDIS_URL": "redis://h"}, {})
    assert ctx.missing_for(["race", "needs:redis"]) is None
    capability, reason = ctx.missing_for(["needs:redis", "needs:db"])
    assert capability is Capability.DB
    assert reason == "needs db: set BACKEND_DATABASE_URL (CROSSTALK_BACKEND_DATABASE_URL)"
    capability, reason = ctx.missing_for(["needs:teleport"])
    assert capability is None and "unknown capability tag" in reason


def test_skip_summary_groups_by_reason():
    ctx = build(TARGET, {})
    for test in ("a", "b"):
        ctx.skipped.append(context.SkipRecord(test, "db", "needs db: set X"))
    ctx.skipped.append(context.SkipRecord("c", "redis", "needs redis: set Y"))
    assert ctx.skip_summary() == ["2 tests skipped: needs db: set X", "1 test skipped: needs redis: set Y"]


def test_masked_hides_store_passwords():
    ctx = build({**TARGET, "REDIS_URL": "redis://:hunter2@h:6379/0"}, {})
    assert "hunter2" not in str(ctx.masked())


def test_bad_number_is_one_line_naming_the_variable():
    ctx = build({**TARGET, "FLOOD_SIZE": "lots"}, {})
    with pytest.raises(context.ConfigurationError, match=r"FLOOD_SIZE 'lots'.*CROSSTALK_FLOOD_SIZE"):
        ctx.int("FLOOD_SIZE", 120)


def test_profile_loader_hook_receives_the_profile_path(monkeypatch):
    seen = []
    monkeypatch.setattr(context, "PROFILE_LOADER", lambda path: seen.append(path) or {"name": "mine"})
    ctx = build({**TARGET, "PROFILE": "p.yaml"}, {})
    assert seen == ["p.yaml"] and ctx.profile == {"name": "mine"}


def test_profile_variables_fill_only_what_nobody_gave(monkeypatch):
    from types import SimpleNamespace

    profile = SimpleNamespace(variables={"FLOOD_SIZE": "40", "OVERSIZED_FRAME_BYTES": "9000",
                                         "REDIS_URL": "redis://profile"})
    monkeypatch.setattr(context, "PROFILE_LOADER", lambda path: profile)
    ctx = build({**TARGET, "REDIS_URL": "redis://given"}, {})
    assert ctx.get("FLOOD_SIZE") == "40" and ctx.sources["FLOOD_SIZE"] == "profile"
    assert ctx.get("REDIS_URL") == "redis://given"
    assert ctx.has(Capability.LIMITS)


# ---------------------------------------------------------------- ledger, skip summary, death note

def test_ledger_round_trip_is_private(tmp_path):
    from crosstalk import cleanup
    from crosstalk.model import TestUser

    user = TestUser("alice", "ctx-alice-1@crosstalk.test", "pw-1", "C1")
    user.user_id = "u1"
    cleanup.record("ctx-", user, tmp_path)
    cleanup.record("cty-", TestUser("bob", "cty-bob@crosstalk.test", "pw-2", "C2"), tmp_path)
    users, files = cleanup.read_ledgers("ctx", tmp_path)
    assert [(u.email, u.password, u.user_id) for u in users] == [("ctx-alice-1@crosstalk.test", "pw-1", "u1")]
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"


def test_email_carries_the_run_prefix():
    ctx = build({**TARGET, "RUN_PREFIX": "nightly-"}, {})
    assert ctx.email("Alice").startswith("nightly-alice-") and ctx.email("a").endswith("@crosstalk.test")


def test_skip_lines_group_reasons_and_strip_robots_parent_prefix():
    from types import SimpleNamespace as T

    from CrosstalkPlatform import skip_lines

    tests = [T(status="SKIP", message="needs db: set X"), T(status="PASS", message=""),
             T(status="SKIP", message="Skipped in parent suite setup: needs db: set X"),
             T(status="SKIP", message="needs redis: set Y")]
    assert skip_lines(tests) == ["2 tests skipped: needs db: set X", "1 test skipped: needs redis: set Y"]


def test_death_note_names_service_exit_code_and_log(tmp_path):
    import subprocess
    import sys

    from crosstalk.sharedplatform import describe_death

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    log = tmp_path / "platform.log"
    log.write_text("started\nbackend service exited with code -9 (its output is above); stopping\n")
    note = describe_death({"pids": {"backend": dead.pid, "launcher": os.getpid()}}, log)
    assert note == (f"the reference platform's backend service (pid {dead.pid}) died: backend service exited "
                    f"with code -9; log: {log}")
    assert describe_death({"pids": {"backend": os.getpid()}}, log) == ""


def test_readme_documents_every_variable_and_capability():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Running against your own platform", 1)[1].split("\n## ", 1)[0]
    for variable in VARIABLES:
        assert f"| `{variable.name}` | `CROSSTALK_{variable.name}` |" in section, variable.name
    for capability in Capability:
        assert f"`{capability.tag}`" in section, capability.tag


def test_incomplete_evidence_turns_pass_into_skip_and_annotates_fail(monkeypatch):
    from types import SimpleNamespace as T

    from CrosstalkPlatform import CrosstalkPlatform

    ctx = build(TARGET, {})
    monkeypatch.setattr(ctx, "death_note", lambda: "")
    context.install(ctx)
    try:
        listener = CrosstalkPlatform()
        ctx.incomplete(Capability.METRICS, "platform_cpu < 80%")
        passed = T(status="PASS", message="p95 80 ms (threshold: p95 < 1s)")
        listener.end_test(T(name="SLA", id="s1-t1"), passed)
        assert passed.status == "SKIP"
        assert passed.message == ("Passed on the evidence available, but platform_cpu < 80% not checked: "
                                  "needs metrics: set METRICS_URL (CROSSTALK_METRICS_URL)")
        ctx.incomplete(Capability.DB, "database rows")
        failed = T(status="FAIL", message="Isolation violated")
        listener.end_test(T(name="Leak", id="s1-t2"), failed)
        assert failed.status == "FAIL"
        assert failed.message.startswith("Isolation violated (also: database rows")
        untouched = T(status="PASS", message="")
        listener.end_test(T(name="Clean", id="s1-t3"), untouched)
        assert untouched.status == "PASS"
    finally:
        context.install(None)
