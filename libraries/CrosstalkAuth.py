"""Robot Framework library: test users, login/refresh/logout/me, refresh races, JWKS validation,
forged tokens."""

from __future__ import annotations

import secrets
import string
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import jwt
import requests
from crosstalk import context, htmllog, races
from crosstalk.context import Capability
from crosstalk.httpretry import HTTP_TIMEOUT, pooled_session
from crosstalk.model import TestUser, Tokens
from crosstalk.rest import warm_sessions
from crosstalk.secrets import MaskedHeaders, mask, mask_password, protect_requests_library_log
from crosstalk.tokens import CLAIM_FORGERIES, Forgery, forge, public_pem_from_jwk, split
from crosstalk.version import VERSION
from robot.api import logger
from robot.api.deco import keyword, library
from robot.api.types import Secret  # RF >= 7.4 (requirements.txt)

# RequestsLibrary 0.9 logs the Authorization header and bodies in full; suites use it for REST
protect_requests_library_log()
MAX_PARALLEL = 32


def _plain(value: Any) -> str:
    return str(getattr(value, "value", value))


def _was_retried(response: requests.Response) -> bool:
    retries = getattr(response.raw, "retries", None)
    return bool(retries and retries.history)


def _strong_password() -> str:
    alphabet = string.ascii_letters + string.digits
    core = "".join(secrets.choice(alphabet) for _ in range(20))
    return f"{core}-{secrets.choice(string.ascii_uppercase)}{secrets.randbelow(10)}!"


@library(scope="GLOBAL", version=VERSION, auto_keywords=False)
class CrosstalkAuth:
    """Users and tokens of the platform under test (auth service at ``${AUTH_URL}``).

    Users are `TestUser` objects: ``label`` (short log name), ``email``,
    ``password``, ``canary`` (a secret unique to the user), ``user_id`` and the
    current ``tokens``.  Passwords and tokens are masked in the log: only the
    first 6 characters are shown, followed by ``…``.
    """

    def __init__(self) -> None:
        # keep-alive pool; a request the server's idle close raced is retried once where safe
        self._http = pooled_session(pool_connections=4, pool_maxsize=MAX_PARALLEL)
        self._jwks: dict[str, Any] | None = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _variable(name: str, default: Any = None) -> Any:
        return context.current().get(name) or default

    def _auth_url(self) -> str:
        url = self._variable("AUTH_URL")
        if not url:
            raise AssertionError(
                "AUTH_URL is not set: run 'Start Or Attach Platform' in the suite setup first."
            )
        return str(url).rstrip("/")

    def _post(self, path: str, body: dict | None = None, token: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = self._auth_url() + path
        try:
            return self._http.post(url, json=body, headers=headers, timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            raise AssertionError(f"POST {url} failed: {type(exc).__name__}: {exc}") from None

    def _get(self, path: str, token: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = self._auth_url() + path
        try:
            return self._http.get(url, headers=headers, timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            raise AssertionError(f"GET {url} failed: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _parallel(function, items: list) -> list:
        if len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
            return list(pool.map(function, items))

    def _register(self, user: TestUser) -> TestUser:
        response = self._post("/auth/register", {"email": user.email, "password": user.password})
        if response.status_code != 201:
            retried = " (after a retry on a dropped keep-alive connection: the first copy was applied)" \
                if response.status_code == 409 and _was_retried(response) else ""
            raise AssertionError(
                f"Registering user '{user.label}' ({user.email}) failed: HTTP {response.status_code} "
                f"{response.text[:200]}{retried}"
            )
        user.user_id = str(response.json().get("user_id"))
        context.current().record_user(user)
        return user

    def _login(self, user: TestUser) -> Tokens:
        response = self._post("/auth/login", {"email": user.email, "password": user.password})
        if response.status_code != 200:
            raise AssertionError(
                f"Login of user '{user.label}' ({user.email}) failed: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        return self._store_tokens(user, response.json())

    @staticmethod
    def _store_tokens(user: TestUser, body: dict) -> Tokens:
        tokens = Tokens(body["access_token"], body["refresh_token"], int(body.get("expires_in") or 0))
        user.tokens = tokens
        user.issued_access_tokens.append(tokens.access_token)
        return tokens

    @staticmethod
    def _token_of(user_or_token: TestUser | Tokens | str | Any) -> str:
        if isinstance(user_or_token, TestUser):
            return user_or_token.access_token
        if isinstance(user_or_token, Tokens):
            return user_or_token.access_token
        return _plain(user_or_token)

    # ------------------------------------------------------------------ users
    @keyword("Create Test Users")
    def create_test_users(self, count: int, prefix: str = "user") -> list[TestUser]:
        """Register ``count`` new users at once and return them as a list of `TestUser`.

        Each gets a unique email, a strong random password and a unique canary.
        Labels are ``<prefix>01``, ``<prefix>02``, ...

        Example:
        | ${users} = | Create Test Users | 10 | prefix=chat |
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}.")
        ctx = context.current()
        users = [
            TestUser(
                label=f"{prefix}{index:02d}",
                email=ctx.email(f"{prefix}{index:02d}"),
                password=_strong_password(),
                canary=f"CANARY-{prefix}{index:02d}-{secrets.token_hex(6)}",
            )
            for index in range(1, count + 1)
        ]
        self._parallel(self._register, users)
        logger.info(
            htmllog.table(
                ("label", "email", "user_id", "password", "canary"),
                ((u.label, u.email, u.user_id, mask_password(u.password), u.canary) for u in users),
                f"{count} users registered",
            ),
            html=True,
        )
        return users

    @keyword("Create Test User")
    def create_test_user(self, label: str = "user") -> TestUser:
        """Register one new user with the given ``label`` and return it.

        Example:
        | ${alice} = | Create Test User | alice |
        """
        user = TestUser(
            label,
            context.current().email(label),
            _strong_password(),
            f"CANARY-{label}-{secrets.token_hex(6)}",
        )
        self._register(user)
        logger.info(f"Registered {user} with password {mask_password(user.password)}, canary {user.canary}")
        return user

    # ------------------------------------------------------------------ sessions
    @keyword("Log In")
    def log_in(self, user: TestUser) -> Tokens:
        """Log ``user`` in with email and password; the tokens are stored on the user and returned.

        Example:
        | Log In | ${alice} |
        """
        tokens = self._login(user)
        logger.info(
            f"{user.label} logged in: access token {mask(tokens.access_token)}, "
            f"refresh token {mask(tokens.refresh_token)}"
        )
        return tokens

    @keyword("Log In Users")
    def log_in_users(self, users: list[TestUser]) -> None:
        """Log every user in at the same time (one request each, in parallel).

        Example:
        | Log In Users | ${users} |
        """
        self._parallel(self._login, list(users))
        logger.info(
            htmllog.table(
                ("label", "user_id", "access token"),
                ((u.label, u.user_id, mask(u.access_token)) for u in users),
                f"{len(users)} users logged in",
            ),
            html=True,
        )

    @keyword("Login Should Be Refused")
    def login_should_be_refused(self, email: str, password: Secret | str) -> None:  # type: ignore[valid-type]
        """Fail unless logging in with ``email`` and ``password`` is refused with HTTP 401.

        Example:
        | Login Should Be Refused | ${alice.email} | wrong-password |
        """
        response = self._post("/auth/login", {"email": email, "password": _plain(password)})
        if response.status_code != 401:
            raise AssertionError(
                f"Login of {email} with password {mask_password(password)} answered "
                f"{response.status_code}, expected 401."
            )

    @keyword("Refresh Tokens")
    def refresh_tokens(self, user: TestUser) -> Tokens:
        """Trade the user's refresh token for a new pair; the new pair replaces the old one on the user.

        Returns the new `Tokens`; the previous access token stays valid until it expires.

        Example:
        | ${old} = | Set Variable | ${alice.access_token} |
        | Refresh Tokens | ${alice} |
        """
        if not user.tokens:
            raise AssertionError(f"User '{user.label}' is not logged in: log in first.")
        old = user.tokens.refresh_token
        response = self._post("/auth/refresh", {"refresh_token": old})
        if response.status_code != 200:
            raise AssertionError(
                f"Refresh for user '{user.label}' with {mask(old)} failed: HTTP "
                f"{response.status_code} {response.text[:200]}"
            )
        tokens = self._store_tokens(user, response.json())
        logger.info(f"{user.label} refreshed: new access token {mask(tokens.access_token)}")
        return tokens

    @keyword("Refresh Should Be Refused")
    def refresh_should_be_refused(
        self,
        refresh_token: Tokens | Secret | str,  # type: ignore[valid-type]
        why: str = "",
    ) -> None:
        """Fail unless ``POST /auth/refresh`` with this refresh token (or the refresh token of a
        `Tokens` pair) answers 401.  ``why`` names the token in the failure message.

        Example:
        | ${before} = | Set Variable | ${alice.tokens} |
        | Refresh Tokens | ${alice} |
        | Refresh Should Be Refused | ${before} |
        | Log Out | ${alice} |
        | Refresh Should Be Refused | ${alice.tokens} | why=the session's refresh token after logout |
        """
        token = refresh_token.refresh_token if isinstance(refresh_token, Tokens) else _plain(refresh_token)
        response = self._post("/auth/refresh", {"refresh_token": token})
        if response.status_code != 401:
            what = f"{why} ({mask(token)})" if why else mask(token)
            raise AssertionError(f"Refresh with {what} answered {response.status_code}, expected 401.")

    # ------------------------------------------------------------------ refresh races
    @keyword("Refresh Concurrently With One Token")
    def refresh_concurrently_with_one_token(
        self, user: TestUser, clients: int, rounds: int = 3, timeout: timedelta = timedelta(seconds=20)
    ) -> dict:
        """``clients`` clients of ``user`` refresh with the same refresh token at once, ``rounds`` times.

        The clients are released together by a barrier.  Each round after the first
        starts from a fresh login (a new token family).  The clients' HTTP connections
        are opened before the barrier, so only the refresh requests themselves race.
        Returns a race record for `Exactly One Refresh Should Win` and the checks after it.

        Example:
        | ${race} = | Refresh Concurrently With One Token | ${alice} | 8 |
        """
        if clients < 2 or rounds < 1:
            raise ValueError(
                f"a refresh race needs at least 2 clients and 1 round, got {clients} and {rounds}"
            )
        record: dict = {"user": user, "rounds": []}
        url = f"{self._auth_url()}/auth/refresh"
        sessions = warm_sessions(clients, self._auth_url())
        try:
            for number in range(1, rounds + 1):
                if number > 1 or not user.tokens:
                    self._login(user)
                token = user.tokens.refresh_token  # type: ignore[union-attr]
                outcomes = races.fire_at_once(
                    [f"{user.label}/client{i + 1}" for i in range(clients)],
                    lambda i, actor, token=token: sessions[i].post(url, json={"refresh_token": token},
                                                                   timeout=HTTP_TIMEOUT),
                    timeout.total_seconds(),
                )
                logger.info(races.outcomes_table(
                    f"round {number}: {clients} concurrent refreshes of {user.label} with refresh token "
                    f"{mask(token)}", outcomes), html=True)
                record["rounds"].append({"token": token, "outcomes": outcomes})
        finally:
            for session in sessions:
                session.close()
        return record

    @keyword("Exactly One Refresh Should Win")
    def exactly_one_refresh_should_win(self, race: dict) -> None:
        """In every round of `Refresh Concurrently With One Token`, one refresh got 200 and a new token
        pair; every other got 401.

        Example:
        | Exactly One Refresh Should Win | ${race} |
        """
        for number, round_ in enumerate(race["rounds"], 1):
            winner = races.exactly_one_winner(
                round_["outcomes"],
                f"refresh race of {race['user'].label} with one refresh token (round {number})",
                lambda o: o.ok and o.status == 200,
                lambda o: o.ok and o.status == 401,
                "401",
            )
            round_["winner"] = winner.value.json()

    @keyword("No Token Should Be Issued Twice")
    def no_token_should_be_issued_twice(self, race: dict) -> None:
        """Access and refresh tokens issued by the race (and the user's earlier ones) are all distinct.

        Example:
        | No Token Should Be Issued Twice | ${race} |
        """
        bodies = [o.value.json() for r in race["rounds"] for o in r["outcomes"] if o.ok and o.status == 200]
        access = [b["access_token"] for b in bodies] + race["user"].issued_access_tokens
        refresh = [b["refresh_token"] for b in bodies] + [r["token"] for r in race["rounds"]]
        twice = races.duplicates(access) + races.duplicates(refresh)
        if twice:
            raise races.RaceError(
                f"refresh race of {race['user'].label}: token(s) issued twice: "
                f"{', '.join(mask(t) for t in twice)}"
            )

    @keyword("Reusing The Raced Token Should Revoke The Family")
    def reusing_the_raced_token_should_revoke_the_family(self, race: dict) -> None:
        """Replaying the last round's used token gets 401 and revokes the winner's new refresh token.

        Example:
        | Reusing The Raced Token Should Revoke The Family | ${race} |
        """
        label = race["user"].label
        last = race["rounds"][-1]
        newest = last.get("winner", {}).get("refresh_token")
        if newest is None:
            raise races.RaceError(
                f"{label}'s refresh race has no winner: run `Exactly One Refresh Should Win` first"
            )
        self.refresh_should_be_refused(last["token"], why=f"{label}'s used refresh token, replayed")
        self.refresh_should_be_refused(
            newest, why=f"reuse detection did not revoke the family: {label}'s refresh token from the "
            "winning refresh, after the replay")

    @keyword("Log Out")
    def log_out(self, user: TestUser) -> str:
        """Log ``user`` out (``POST /auth/logout``); returns the access token that was revoked.

        Logout ends the session: the contract revokes the access token and the
        refresh-token family of its login.  The user keeps the revoked tokens, so
        keywords given the user now use them (assigning the return value would log
        it: prefer the user).

        Example:
        | Log Out | ${alice} |
        | Me Should Be Refused | ${alice} |
        """
        token = user.access_token
        response = self._post("/auth/logout", token=token)
        if response.status_code != 204:
            raise AssertionError(
                f"Logout of user '{user.label}' answered {response.status_code}, expected 204: "
                f"{response.text[:200]}"
            )
        logger.info(f"{user.label} logged out; access token {mask(token)} must now be refused.")
        return token

    @keyword("Get Me")
    def get_me(self, user_or_token: TestUser | Tokens | Secret | str) -> dict:
        """``GET /auth/me`` with the user's current access token (or the given token); returns the JSON body.

        Example:
        | ${me} = | Get Me | ${alice} |
        | Should Be Equal | ${me}[email] | ${alice.email} |
        """
        token = self._token_of(user_or_token)
        response = self._get("/auth/me", token)
        if response.status_code != 200:
            raise AssertionError(
                f"GET /auth/me with {mask(token)} answered {response.status_code}, expected 200."
            )
        return response.json()

    @keyword("Me Should Be Refused")
    def me_should_be_refused(self, token: TestUser | Tokens | Secret | str) -> None:  # type: ignore[valid-type]
        """Fail unless ``GET /auth/me`` with ``token`` answers 401.

        Example:
        | Me Should Be Refused | ${revoked_token} |
        """
        plain = self._token_of(token)
        response = self._get("/auth/me", plain)
        if response.status_code != 401:
            raise AssertionError(
                f"GET /auth/me with token {mask(plain)} answered {response.status_code}, expected 401."
            )

    @keyword("Bearer Headers")
    def bearer_headers(self, user_or_token: TestUser | Tokens | Secret | str) -> dict:
        """``{"Authorization": "Bearer <token>"}`` for RequestsLibrary calls (it masks the header in its log).

        Example:
        | ${headers} = | Bearer Headers | ${alice} |
        | GET On Session | backend | /threads | headers=${headers} |
        """
        return MaskedHeaders(Authorization=f"Bearer {self._token_of(user_or_token)}")

    # ------------------------------------------------------------------ tokens
    def _fetch_jwks(self, refresh: bool = False) -> dict[str, Any]:
        if self._jwks is None or refresh:
            response = self._get("/.well-known/jwks.json")
            if response.status_code != 200:
                raise AssertionError(f"JWKS at {self._auth_url()} answered {response.status_code}.")
            self._jwks = response.json()
        return self._jwks

    def _jwk_for(self, kid: str | None) -> dict[str, Any]:
        for refresh in (False, True):
            for jwk in self._fetch_jwks(refresh).get("keys", []):
                if jwk.get("kid") == kid:
                    return jwk
        raise AssertionError(f"No key with kid '{kid}' in the JWKS of {self._auth_url()}.")

    @keyword("Validate Token Against JWKS")
    def validate_token_against_jwks(self, user_or_token: TestUser | Tokens | Secret | str) -> dict:
        """Verify an access token with PyJWT against the auth service's JWKS; return its claims.

        Checks RS256, the ``kid``, the signature, ``exp``, and ``iss``/``aud``
        when ``${JWT_ISSUER}`` / ``${JWT_AUDIENCE}`` are known.

        Example:
        | ${claims} = | Validate Token Against JWKS | ${alice} |
        | Should Be Equal | ${claims}[sub] | ${alice.user_id} |
        """
        token = self._token_of(user_or_token)
        header = jwt.get_unverified_header(token)
        key = jwt.PyJWK(self._jwk_for(header.get("kid")))
        issuer = self._variable("JWT_ISSUER")
        audience = self._variable("JWT_AUDIENCE")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                issuer=issuer or None,
                audience=audience or None,
                options={"require": ["exp", "iat", "sub", "jti"], "verify_aud": bool(audience)},
            )
        except jwt.PyJWTError as exc:
            raise AssertionError(f"Token {mask(token)} does not verify against the JWKS: {exc}.") from None
        logger.info(
            f"Token {mask(token)} verifies: sub={claims['sub']} jti={claims['jti']} exp={claims['exp']}"
        )
        return claims

    @keyword("Forge Token")
    def forge_token(self, user: TestUser, kind: Forgery) -> str:
        """A forged variant of ``user``'s access token that breaks exactly one rule (see `Forgery`).

        Kinds: ``alg_none``, ``alg_none_capitalized`` (alg "None"), ``alg_none_upper``
        (alg "NONE"), ``signature_stripped``, ``payload_tampered``, ``expired``,
        ``missing_exp``, ``wrong_issuer``, ``wrong_audience``, ``unknown_kid``, ``wrong_signature``,
        ``hs256_confusion`` (HS256 with the public key PEM as HMAC secret).
        The claim-rule forgeries (``expired``, ``missing_exp``, ``wrong_issuer``,
        ``wrong_audience``) are signed with ``JWT_PRIVATE_KEY`` only after it was
        checked against the target's JWKS (same public key); without such a key
        the test is skipped with the reason, never passed.

        Example:
        | ${forged} = | Forge Token | ${alice} | alg_none |
        | Me Should Be Refused | ${forged} |
        """
        genuine = user.access_token
        header, _, _ = split(genuine)
        public_pem = (
            public_pem_from_jwk(self._jwk_for(header.get("kid"))) if kind is Forgery.HS256_CONFUSION else None
        )
        platform_key = None
        if kind in CLAIM_FORGERIES:
            # only a key proven to be the target's own (same public key as its JWKS) may sign these:
            # with any other key the token is refused for its signature and the claim is never tested
            ctx = context.current()
            ctx.require(Capability.SIGNING_KEY)
            platform_key = ctx.signing_key
        token = forge(kind, genuine, public_pem, platform_key)
        logger.info(f"Forged {kind.value} token from {user.label}'s token: {mask(token, 12)}")
        return token
