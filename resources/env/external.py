"""Variable file: an external deployment of a platform that speaks the Crosstalk contract.

    export CROSSTALK_AUTH_URL=https://auth.staging.example.com
    export CROSSTALK_BACKEND_URL=https://chat.staging.example.com
    robot --variablefile resources/env/external.py --outputdir results suites/

Every value comes from a ``CROSSTALK_<NAME>`` environment variable, so no secret
is committed (the README lists every variable).  ``AUTH_URL`` and ``BACKEND_URL``
are required; each other variable enables a capability, and a test that needs a
capability the target lacks is skipped with one line naming the variable:

    CROSSTALK_BACKEND_DATABASE_URL                                needs:db
    CROSSTALK_AUTH_DATABASE_URL                                   needs:auth-db
    CROSSTALK_ANALYTICS_DATABASE_URL                              needs:analytics-db
    CROSSTALK_REDIS_URL                                           needs:redis
    CROSSTALK_JWT_PRIVATE_KEY (PEM file, checked against the JWKS) needs:signing-key
    CROSSTALK_FAULT_INJECTION=on                                  needs:fault-injection
    CROSSTALK_METRICS_URL (Prometheus text endpoint)              needs:metrics
    CROSSTALK_MAX_FRAME_BYTES, CROSSTALK_FLOOD_SIZE               needs:limits

Without the two required ones the suite setup fails with one line saying so
(rather than testing the reference platform instead).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "libraries"))

from crosstalk.context import VARIABLES as _VARIABLES

for _variable in _VARIABLES:
    if os.environ.get(_variable.env):
        globals()[_variable.name] = os.environ[_variable.env]

_MISSING = [f"CROSSTALK_{name}" for name in ("AUTH_URL", "BACKEND_URL")
            if not os.environ.get(f"CROSSTALK_{name}")]
if _MISSING:
    # never fall back to the reference platform: the suite setup fails with this line
    REQUIRE_TARGET = (f"resources/env/external.py: {' and '.join(_MISSING)} not set: export the "
                      "target's auth and backend base URLs")
