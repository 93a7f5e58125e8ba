"""Shared pytest fixtures: a real reference platform started through its launcher.

``platform`` is one platform per test session (no fault switches, free ports, a
JWT key the tests know so they can forge tokens with exact claims).
``platform_factory`` starts more, e.g. ``platform_factory(faults=["bola_rest"])``;
each is stopped at the end of the session.  ``start_platform`` is the plain
function behind both, for use outside fixtures.

With ``DATABASE_URL`` / ``REDIS_URL`` set, the launcher uses those servers.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # every start of the reference platform goes through the one launcher of crosstalk.launcher;
    # imported where used, so tests/wheel (no runtime dependencies installed) can load this file
    from crosstalk.launcher import Launched as RunningPlatform

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def pytest_report_header(config) -> str:
    """Where robot subprocesses find crosstalk/resources: the suites import the installed package."""
    found = next((Path(p) / "crosstalk" / "resources" for p in sys.path
                  if p and (Path(p) / "crosstalk" / "resources" / "chat.resource").is_file()), None)
    if found:
        return f"robotframework-crosstalk resources: {found}"
    return ("robotframework-crosstalk is NOT installed here: tests that run the suites fail to import "
            "crosstalk/resources/*.resource; pip install -e '.[platform]'")


def generate_private_key_pem() -> bytes:
    from crosstalk.launcher import signing_key_pem

    return signing_key_pem()


def launch_platform(
    faults: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    private_key_pem: bytes | None = None,
    work_dir: Path | None = None,
) -> RunningPlatform:
    """Start ``python -m reference_platform`` on free ports without waiting; see ``wait_until_up``."""
    from crosstalk.launcher import launch, write_signing_key

    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="refplat-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    key = write_signing_key(work_dir / f"jwt-{tag}.pem", private_key_pem) if private_key_pem else None
    extra = list(extra_args)
    if os.environ.get("DATABASE_URL"):
        # Parallel platforms on one external server need their own databases.
        extra += ["--auth-db", f"auth_{tag}", "--backend-db", f"backend_{tag}"]
    return launch(work_dir / f"state-{tag}.json", work_dir / f"launcher-{tag}.log", faults=faults,
                  private_key=key, extra_args=extra, cwd=REPO_ROOT)


def wait_until_up(platform: RunningPlatform, timeout: float = START_TIMEOUT) -> RunningPlatform:
    """Wait for the launcher's state file (written once both services are healthy)."""
    platform.wait_until_up(timeout)
    return platform


def start_platform(
    faults: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    private_key_pem: bytes | None = None,
    work_dir: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> RunningPlatform:
    """Start ``python -m reference_platform`` on free ports and wait until it is healthy."""
    return wait_until_up(launch_platform(faults, extra_args, private_key_pem, work_dir), timeout)


@pytest.fixture(scope="session")
def platform_factory(tmp_path_factory) -> Iterator:
    """Start extra platforms: ``platform_factory(faults=[...], extra_args=[...])``."""
    started: list[RunningPlatform] = []

    def factory(faults: Sequence[str] = (), extra_args: Sequence[str] = (),
                private_key_pem: bytes | None = None) -> RunningPlatform:
        running = start_platform(faults, extra_args, private_key_pem, tmp_path_factory.mktemp("platform"))
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        running.stop()


@pytest.fixture(scope="session")
def platform(platform_factory) -> RunningPlatform:
    """The correct reference platform (no faults) for the whole session, with a JWT key tests know."""
    return platform_factory(private_key_pem=generate_private_key_pem())
