"""Variable file: the platform these tests run against (robot --variablefile profile.py ...).

Every value comes from a CROSSTALK_* environment variable, so no URL with a password and no
key is committed: set them in your shell, as CI secrets/variables, or in Jenkins credentials.
With none set, Crosstalk starts its reference platform (the [platform] extra) and runs
against it, so a fresh project passes out of the box.

    export CROSSTALK_AUTH_URL=https://auth.staging.example.com
    export CROSSTALK_BACKEND_URL=https://chat.staging.example.com
    export CROSSTALK_BACKEND_DATABASE_URL=postgresql://reader:secret@db.staging:5432/backend  # optional
    robot --variablefile profile.py --outputdir results tests/
"""

import os

NAMES = (
    "AUTH_URL",  # auth service base URL (/auth/register, /auth/login, ...)
    "BACKEND_URL",  # backend base URL (/health, /threads, ...)
    "WS_URL",  # agent WebSocket (default: BACKEND_URL with ws(s):// and /ws)
    "AUTH_DATABASE_URL",  # PostgreSQL of the auth service (store checks; optional)
    "BACKEND_DATABASE_URL",  # PostgreSQL of the backend (isolation oracle rows; optional)
    "REDIS_URL",  # Redis (sessions, caches; optional)
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_PRIVATE_KEY",  # PEM path of the signing key, only if testers may use it (optional)
)


def get_variables() -> dict:
    return {name: os.environ[f"CROSSTALK_{name}"] for name in NAMES if os.environ.get(f"CROSSTALK_{name}")}
