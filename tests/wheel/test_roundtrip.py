"""The wheel round trip: what a team does with the published package, on this commit.

Build the wheel, install it into a fresh virtualenv in an empty temporary directory outside
the repository, ``crosstalk init`` a project there, install the project's requirements.txt
(its pin resolves to the wheel just built), and run the project's suite against the reference
platform the suite attaches automatically: it passes, and ``crosstalk summary`` reads it.

Runs in ``tox -e wheel`` (part of ``tox`` and so of ``.ci/run``); elsewhere it skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not os.environ.get("CROSSTALK_WHEEL_ROUNDTRIP"),
    reason="the wheel round trip runs in tox -e wheel (CROSSTALK_WHEEL_ROUNDTRIP=1)")


def _clean_env(venv: Path) -> dict:
    """The environment of a user's shell: this repository and its venvs nowhere in it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "REFPLAT_FAULTS")
           and not k.startswith(("CROSSTALK_", "TOX_"))
           and k not in ("AUTH_URL", "BACKEND_URL", "WS_URL", "DATABASE_URL", "REDIS_URL")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    env["CROSSTALK_PLATFORM_LINGER"] = "0"  # stop the platform with the run: the directory goes next
    return env


def _run(step: str, command: list, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    print(f"{step}: {time.monotonic() - started:.1f} s (exit {result.returncode})")
    assert result.returncode == 0, (f"{step} failed with exit code {result.returncode}:\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.mark.timeout(1500)
def test_wheel_installs_and_a_crosstalk_init_project_passes():
    work = Path(tempfile.mkdtemp(prefix="crosstalk-wheel-")).resolve()
    assert ROOT not in work.parents
    venv, dist, project = work / "venv", work / "dist", work / "team-chat-tests"
    env = _clean_env(venv)
    # from a copy of the checkout's files (tracked and new, not ignored): no stale build/ of an
    # earlier build or editable install can slip into the wheel
    source = work / "source"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    _run("build the wheel", [sys.executable, "-m", "build", "--wheel", "--outdir", dist, source], source,
         {**os.environ, "PYTHONPATH": ""}, 600)
    wheels = sorted(dist.glob("robotframework_crosstalk-*.whl"))
    assert len(wheels) == 1, wheels
    _run("fresh venv", [sys.executable, "-m", "venv", venv], work, env, 300)
    _run("pip install the wheel [platform]",
         [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
          f"{wheels[0]}[platform]"], work, env, 900)
    where = _run("import by name", [venv / "bin" / "python", "-c",
                 "import CrosstalkChat, crosstalk, reference_platform; print(CrosstalkChat.__file__)"],
                 work, env, 60).stdout
    assert str(venv) in where and str(ROOT) not in where, where
    _run("crosstalk init", [venv / "bin" / "crosstalk", "init", project], work, env, 60)
    _run("pip install -r requirements.txt (the pin)",
         [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "--find-links", dist, "-r", project / "requirements.txt"], project, env, 600)
    robot = _run("the project's suite", [venv / "bin" / "robot", "--variablefile", "profile.py",
                                          "--outputdir", "results", "tests/"], project, env, 900)
    assert "2 tests, 2 passed, 0 failed" in robot.stdout, robot.stdout[-2000:]
    summary = _run("crosstalk summary", [venv / "bin" / "crosstalk", "summary", "results/output.xml"],
                   project, env, 120).stdout
    print(summary)
    assert "Crosstalk: 2 passed, 0 failed, 0 skipped" in summary
    assert "| Chat Isolation › Users Chat At Once And No Data Crosses Between Them | 5 | 7 |" in summary
    shutil.rmtree(work, ignore_errors=True)
