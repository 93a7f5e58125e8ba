"""Full load profile (seed 002): ``robot --variablefile resources/env/load_full.py suites/``.

100 users start their agents at once; 30 users chat 5 rounds of 5 messages.
The thresholds are this project's targets, far inside the seed's floors
(P95 < 5 s, P99 < 8 s, memory < 4 GB, CPU < 80 %).

A variable file overrides every suite variable of the same name (case and
underscores aside), so each name here belongs to one suite and no other suite or
resource uses it: ``STARTUP_*`` and ``PLATFORM_*`` are concurrent_agent_startup's,
``SUSTAINED_*`` and ``OPEN_*`` sustained_performance's.  ``tests/integration/test_profiles.py``
runs every file in ``resources/env/`` through every suite's setup and fails on a collision.
"""

STARTUP_USERS = 100
STARTUP_P95 = "250ms"
STARTUP_P99 = "500ms"
COMPLETION_P95 = "1s"
PLATFORM_MEMORY_LIMIT = "4GB"
PLATFORM_CPU_LIMIT = "80%"
SUSTAINED_USERS = 30
SUSTAINED_ROUNDS = 5
SUSTAINED_MESSAGES = 5
OPEN_RATE = 100
OPEN_SECONDS = 5
