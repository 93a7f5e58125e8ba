"""Variable file: a reference platform you started yourself on the default ports.

    python -m reference_platform            # in another terminal
    robot --variablefile resources/env/local.py --outputdir results suites/

The database and Redis URLs are printed by the launcher (embedded servers get
free ports); set them in the environment when a suite reads the stores (tests that
need a store you did not give are skipped with the variable's name).

Better, let the launcher write its state and attach to it as the reference
platform (stores, signing key, limits and faults included):

    python -m reference_platform --state-file results/platform.json
    robot --variable REFERENCE_STATE:results/platform.json --outputdir results suites/
"""

import os

AUTH_URL = os.environ.get("AUTH_URL", "http://127.0.0.1:8081")
BACKEND_URL = os.environ.get("BACKEND_URL", "http://127.0.0.1:8000")
WS_URL = os.environ.get("WS_URL", "ws://127.0.0.1:8000/ws")
AUTH_DATABASE_URL = os.environ.get("AUTH_DATABASE_URL", "")
BACKEND_DATABASE_URL = os.environ.get("BACKEND_DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
