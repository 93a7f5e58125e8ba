"""Locustfile: Crosstalk chat users (``crosstalk.locustuser``) for Locust, local or distributed.

    locust -f bench/locust_crosstalk.py --headless -u 50 -r 50 --run-time 20s \\
        --crosstalk-auth-url http://127.0.0.1:8081 --crosstalk-ws-url ws://127.0.0.1:8000/ws
    # distributed: add --master --expect-workers 2 here, and run `locust -f bench/locust_crosstalk.py
    # --worker --master-host HOST` on each worker machine; bench/locust_distributed.py does all of
    # it on loopback, with and without a planted cross-talk fault.

The master's exit code is non-zero on any failure, isolation violation or missed
``--crosstalk-p95-ms`` SLA.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "libraries"))

from crosstalk.locustuser import ChatUser

__all__ = ["ChatUser"]
