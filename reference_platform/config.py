"""Settings shared by the launcher and the two services.

The launcher builds one ``Settings`` and hands it to each service process as one
JSON line on its stdin (or, when a service is started by hand, in the
``REFPLAT_SETTINGS`` environment variable), so both services always agree on
issuer, audience, limits and faults.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

SETTINGS_ENV = "REFPLAT_SETTINGS"
ISSUER = "crosstalk-reference-auth"
AUDIENCE = "crosstalk-reference-backend"
REVOCATION_CHANNEL = "revoked-access-tokens"
REDIS_POOL_SIZE = 1000


@dataclass
class Settings:
    host: str = "127.0.0.1"
    auth_url: str = ""
    backend_url: str = ""
    auth_database_url: str = ""
    backend_database_url: str = ""
    redis_url: str = ""
    jwt_private_key_path: str = ""
    access_token_ttl: int = 900
    refresh_token_ttl: int = 7 * 24 * 3600
    allowed_origins: list[str] = field(default_factory=lambda: ["http://localhost", "http://127.0.0.1"])
    agent_step_ms: int = 5
    max_frame_bytes: int = 65536
    max_body_bytes: int = 1024 * 1024
    rate_limit_per_second: float = 20.0
    rate_limit_burst: int = 40
    issuer: str = ISSUER
    audience: str = AUDIENCE
    faults: list[str] = field(default_factory=list)
    db_pool_size: int = 20
    variant: bool = False
    variant_seed: int = 0
    analytics_db: str = "analytics"
    # the backend's Redis connections; 100 ran dry at ~8,000 simultaneous users (HTTP 500 on
    # handshakes, agent_error on runs); see docs/load.md for how the default was chosen
    redis_pool_size: int = REDIS_POOL_SIZE
    fast_password_hash: bool = False  # benchmarks only: cheap argon2 so thousands of users register fast
    test_hooks: bool = False  # honour X-Crosstalk-Inject (see hooks.py)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Settings:
        raw = os.environ.get(SETTINGS_ENV)
        if not raw:
            raise SystemExit(f"{SETTINGS_ENV} is not set: start with python -m reference_platform")
        return cls(**json.loads(raw))
