"""Embedded PostgreSQL starts from any checkout path, and a failed start names its cause in one line.

A Unix-domain socket path is limited to about 107 bytes; the embedded server used to
put its socket in its data directory, which lives under the checkout
(``results/platform-data/``), so a deep CI workspace could not start it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg2
import pytest
from crosstalk.launcher import launch

from reference_platform.embedded import EmbeddedPostgres, EmbeddedStartError
from tests.conftest import REPO_ROOT, START_TIMEOUT

pytestmark = pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")),
                                reason="DATABASE_URL is set: the launcher starts no embedded PostgreSQL")

LONG = 160  # bytes, well over the ~107 a Unix socket path may have


def _long_directory(root: Path) -> Path:
    path = root
    while len(os.fsencode(path)) <= LONG:
        path = path / ("deep-checkout-path-" + "x" * 20)
    path.mkdir(parents=True)
    return path


def test_the_platform_starts_from_a_directory_over_150_bytes(tmp_path):
    workspace = _long_directory(tmp_path)
    assert len(os.fsencode(workspace)) > 150
    data_dir, state_file = workspace / "results" / "platform-data" / "run", workspace / "state.json"
    log_file = workspace / "launcher.log"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # cwd and the data directory in the long path: where a deep checkout puts them
    running = launch(state_file, log_file, test_hooks=False, extra_args=["--data-dir", str(data_dir)],
                     env=env, cwd=workspace)
    running.wait_until_up(START_TIMEOUT)
    try:
        assert Path(running.state["data_dir"]) == data_dir
        with psycopg2.connect(running.state["auth_database_url"], connect_timeout=5) as connection, \
                connection.cursor() as cursor:
            cursor.execute("SHOW unix_socket_directories")
            assert cursor.fetchone()[0] == "", "PostgreSQL still makes a Unix socket (path length limit)"
    finally:
        assert running.stop() == 0, running.log_tail()


def test_a_failed_start_names_the_cause_in_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = EmbeddedPostgres(tmp_path / "postgres", port=busy.getsockname()[1])
        with pytest.raises(EmbeddedStartError) as failure:
            server.start(template_root=REPO_ROOT / "results" / "platform-data")
    message = str(failure.value)
    assert "\n" not in message, message
    assert "FATAL" in message and "Address already in use" in message, message
