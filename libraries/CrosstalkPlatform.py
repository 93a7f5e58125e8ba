"""Robot Framework library: the platform under test (start/attach, target variables, health)."""

from __future__ import annotations

import os
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from crosstalk import profile as target_profile
from crosstalk.secrets import mask_url
from crosstalk.sharedplatform import (
    PlatformError,
    SharedPlatform,
    check_health,
    variant_requested,
    wait_healthy,
)
from robot.api import logger
from robot.api.deco import keyword, library
from robot.libraries.BuiltIn import BuiltIn

TARGET_VARIABLES = (
    "AUTH_URL",
    "BACKEND_URL",
    "WS_URL",
    "AUTH_DATABASE_URL",
    "BACKEND_DATABASE_URL",
    "REDIS_URL",
)
CONFIGURED_TARGET_WAIT = 10.0
# known for the reference platform; optional for a configured target (security tests use them)
TOKEN_VARIABLES = ("JWT_ISSUER", "JWT_AUDIENCE", "JWT_PRIVATE_KEY")
STATE_KEYS = {name: name.lower() for name in TARGET_VARIABLES}


def _ws_from_backend(backend_url: str) -> str:
    parts = urlsplit(backend_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


@library(scope="GLOBAL", auto_keywords=False)
class CrosstalkPlatform:
    """Attaches the suites to the platform under test, or starts the reference platform.

    Target variables, in order of precedence: ``--variable``, a variable file
    (``--variablefile resources/env/external.py``), environment variables.
    When ``AUTH_URL`` is set nowhere, the reference platform is started (with
    the fault switches from ``REFPLAT_FAULTS``) and shared by every robot/pabot
    process of the run; the variables ``${AUTH_URL}``, ``${BACKEND_URL}``,
    ``${WS_URL}``, ``${AUTH_DATABASE_URL}``, ``${BACKEND_DATABASE_URL}`` and
    ``${REDIS_URL}`` are then set globally.
    """

    def __init__(self) -> None:
        self._shared: SharedPlatform | None = None
        self._acquired = 0
        self.target: dict[str, str] = {}

    @staticmethod
    def _configured(name: str) -> str | None:
        value = BuiltIn().get_variable_value("${%s}" % name)  # noqa: UP031
        if value in (None, ""):
            value = os.environ.get(name) or None
        return str(value) if value is not None else None

    @keyword("Start Or Attach Platform")
    def start_or_attach_platform(self, timeout: timedelta = timedelta(seconds=120)) -> dict:
        """Use the configured target, or start (or join) the shared reference platform; wait until healthy.

        Sets ``${AUTH_URL}``, ``${BACKEND_URL}``, ``${WS_URL}``, ``${AUTH_DATABASE_URL}``,
        ``${BACKEND_DATABASE_URL}`` and ``${REDIS_URL}`` as global variables and
        returns them as a dictionary.  Bad configuration fails here with one line.
        Pair it with `Release Platform` in the suite teardown.

        Example:
        | Suite Setup    | Start Or Attach Platform |
        | Suite Teardown | Release Platform         |
        """
        seconds = timeout.total_seconds()
        if self.target and self._configured("AUTH_URL") == self.target["AUTH_URL"]:
            # already attached by a parent suite: a child suite's own setup just joins
            if self._acquired:
                self._acquired += 1
            return dict(self.target)
        if self._configured("AUTH_URL"):
            # a configured target's profile comes only from PROFILE (default: the reference's)
            profile = self._activate_profile(
                self._configured("PROFILE") or self._configured(target_profile.ENV_VAR)
            )
            target = self._configured_target(seconds)
            extra = {name: self._configured(name) or "" for name in TOKEN_VARIABLES}
            extra["JWT_ISSUER"] = extra["JWT_ISSUER"] or str(profile.limit("issuer", ""))
            extra["JWT_AUDIENCE"] = extra["JWT_AUDIENCE"] or str(profile.limit("audience", ""))
            where = "configured target"
        else:
            if self._shared is None:
                self._shared = SharedPlatform(
                    os.environ.get("REFPLAT_FAULTS", ""), variant=variant_requested()
                )
            state = self._shared.acquire(seconds)
            self._acquired += 1
            target = {name: str(state.get(key) or "") for name, key in STATE_KEYS.items()}
            key_file = self._shared.key_file
            extra = {
                "JWT_ISSUER": str(state.get("issuer") or ""),
                "JWT_AUDIENCE": str(state.get("audience") or ""),
                "JWT_PRIVATE_KEY": str(key_file) if key_file.is_file() else "",
            }
            faults = ", ".join(state.get("faults") or []) or "none"
            # the started platform names its own profile (variant mode: resources/profiles/variant.yaml)
            profile = self._activate_profile(self._configured("PROFILE") or state.get("profile"))
            mode = "variant mode, " if state.get("variant") else ""
            launcher = state.get("pids", {}).get("launcher")
            where = f"reference platform ({mode}launcher pid {launcher}, faults: {faults})"
        for name, value in {**target, **extra}.items():
            BuiltIn().set_global_variable("${%s}" % name, value)  # noqa: UP031
        self.target = target
        BuiltIn().set_global_variable("${PROFILE}", profile.source)
        rows = "".join(f"<tr><td>{n}</td><td>{mask_url(v)}</td></tr>" for n, v in target.items())
        rows += f"<tr><td>PROFILE</td><td>{profile.describe()}</td></tr>"
        logger.info(f"Using the {where}:<table>{rows}</table>", html=True)
        return dict(target)

    @staticmethod
    def _activate_profile(name: str | None) -> target_profile.Profile:
        try:
            return target_profile.activate(name)
        except target_profile.ProfileError as exc:
            raise PlatformError(str(exc)) from None

    def _configured_target(self, seconds: float) -> dict[str, str]:
        target = {name: self._configured(name) or "" for name in TARGET_VARIABLES}
        if not target["BACKEND_URL"]:
            raise PlatformError(
                "AUTH_URL is set but BACKEND_URL is not: set both (variable file resources/env/external.py "
                "shows all six), or unset AUTH_URL to use the reference platform."
            )
        for name in ("AUTH_URL", "BACKEND_URL"):
            if urlsplit(target[name]).scheme not in ("http", "https"):
                raise PlatformError(f"{name} '{target[name]}' is not an http(s) URL: fix the variable.")
        target["WS_URL"] = target["WS_URL"] or _ws_from_backend(target["BACKEND_URL"])
        # a configured target should already be up: do not spend the full start-up timeout on it
        wait_healthy(target["BACKEND_URL"], min(seconds, CONFIGURED_TARGET_WAIT))
        self._check_auth(target["AUTH_URL"])
        self._check_stores(target)
        return target

    @staticmethod
    def _check_auth(auth_url: str) -> None:
        import requests

        url = auth_url.rstrip("/") + "/.well-known/jwks.json"
        try:
            response = requests.get(url, timeout=5)
        except requests.RequestException as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
            raise PlatformError(
                f"Auth service {auth_url} is unreachable: {reason}. Start it or fix AUTH_URL."
            ) from None
        if response.status_code != 200:
            raise PlatformError(
                f"Auth service {auth_url} answered {response.status_code} on {url}: fix AUTH_URL."
            )

    @staticmethod
    def _check_stores(target: dict[str, str]) -> None:
        # wrong database credentials should fail here, not in the middle of an isolation test
        import psycopg2
        import redis

        for name in ("AUTH_DATABASE_URL", "BACKEND_DATABASE_URL"):
            url = target[name]
            if not url:
                logger.warn(f"{name} is not set: checks that read the database will fail.")
                continue
            try:
                psycopg2.connect(url, connect_timeout=5).close()
            except psycopg2.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise PlatformError(f"{name} {mask_url(url)} is not usable: {first}") from None
        if not target["REDIS_URL"]:
            logger.warn("REDIS_URL is not set: checks that read Redis will fail.")
            return
        try:
            client = redis.Redis.from_url(target["REDIS_URL"], socket_timeout=5, socket_connect_timeout=5)
            client.ping()
            client.close()
        except redis.RedisError as exc:
            raise PlatformError(f"REDIS_URL {mask_url(target['REDIS_URL'])} is not usable: {exc}") from None

    @keyword("Release Platform")
    def release_platform(self) -> None:
        """Give back this process's claim on the shared reference platform (the last holder stops it).

        Does nothing for a configured target.  Safe to call more than once.

        Example:
        | Suite Teardown | Release Platform |
        """
        if self._shared is None or self._acquired == 0:
            return
        self._acquired -= 1
        if self._acquired == 0:
            outcome = self._shared.release()
            self.target = {}
            if outcome == "stopped":
                logger.info("The reference platform was stopped (last holder).")
            elif outcome == "lingering":
                logger.info(
                    f"Last holder: the reference platform stops in {self._shared.linger:g} s unless "
                    "another process joins it (CROSSTALK_PLATFORM_LINGER=0 stops it at once)."
                )

    @keyword("Platform Should Be Healthy")
    def platform_should_be_healthy(self, timeout: timedelta = timedelta(seconds=10)) -> None:
        """Fail unless ``GET ${BACKEND_URL}/health`` answers 200 within ``timeout``.

        Example:
        | Platform Should Be Healthy | timeout=5s |
        """
        backend = self._configured("BACKEND_URL")
        if not backend:
            raise PlatformError(
                "BACKEND_URL is not set: run Start Or Attach Platform in the suite setup first."
            )
        wait_healthy(backend, timeout.total_seconds())
        check_health(backend)
