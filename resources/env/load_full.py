"""Full load profile (seed 002): ``robot --variablefile resources/env/load_full.py suites/``.

100 users start their agents at once; 30 users chat 5 rounds of 5 messages.
The thresholds are this project's targets, far inside the seed's floors
(P95 < 5 s, P99 < 8 s, memory < 4 GB, CPU < 80 %).
"""

USERS = 100
STARTUP_P95 = "250ms"
STARTUP_P99 = "500ms"
COMPLETION_P95 = "1s"
PLATFORM_MEMORY_LIMIT = "4GB"
PLATFORM_CPU_LIMIT = "80%"
SUSTAINED_USERS = 30
ROUNDS = 5
MESSAGES = 5
OPEN_RATE = 100
OPEN_SECONDS = 5
