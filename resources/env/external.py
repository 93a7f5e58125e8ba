"""Variable file: an external deployment of a platform that speaks the Crosstalk contract.

    export CROSSTALK_AUTH_URL=https://auth.staging.example.com ...
    robot --variablefile resources/env/external.py --outputdir results suites/

Every value comes from a CROSSTALK_* environment variable so no secret is
committed; a missing one fails the suite setup with one line naming it.
``JWT_PRIVATE_KEY`` (a PEM path) is only for deployments whose signing key the
tester may use: without it the claim-rule forgeries are signed with a foreign key.
"""

import os

_PREFIX = "CROSSTALK_"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(_PREFIX + name, default)


AUTH_URL = _env("AUTH_URL", "https://auth.example.invalid")
BACKEND_URL = _env("BACKEND_URL", "https://chat.example.invalid")
WS_URL = _env("WS_URL", "")  # default: BACKEND_URL with wss:// and /ws
AUTH_DATABASE_URL = _env("AUTH_DATABASE_URL")  # postgresql://user:password@host:5432/auth
BACKEND_DATABASE_URL = _env("BACKEND_DATABASE_URL")  # postgresql://user:password@host:5432/backend
REDIS_URL = _env("REDIS_URL")  # redis://:password@host:6379/0
JWT_ISSUER = _env("JWT_ISSUER")
JWT_AUDIENCE = _env("JWT_AUDIENCE")
JWT_PRIVATE_KEY = _env("JWT_PRIVATE_KEY")
