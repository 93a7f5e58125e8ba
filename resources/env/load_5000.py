"""5,000 users start their agents at the same moment (issue 14): every run in flight at once, not ramped.

    robot --variablefile resources/env/load_5000.py --outputdir results/5000 \\
        suites/concurrent_agent_startup.robot

All 5,000 users log in and connect first (that takes minutes: two argon2 hashes
per user on the auth service), then all send their message at once, so all
5,000 runs are in flight together (``in_flight_peak``).  Every run must complete
with its own answer and no data may cross (frames checked on arrival, then the
isolation oracle over REST, the database and Redis).  This profile measures
capacity on the machine it runs on: latency limits are wide and the platform's
CPU is reported, not limited (it is busy by design).  The reference platform's
backend Redis pool (``--redis-pool-size``, 1,000 by default) is sized for it: a 1,000-user
burst kept all 400 connections of a 400 pool busy (Redis connected_clients peaked at 407).
"""

STARTUP_USERS = 5000
# every message is sent at once: the last answers wait behind 4,999 others on a 2-core machine
STARTUP_TIMEOUT = "300s"
STARTUP_P95 = "240s"
STARTUP_P99 = "280s"
COMPLETION_P95 = "280s"
PLATFORM_MEMORY_LIMIT = "8GB"
PLATFORM_CPU_LIMIT = "101%"
# a burst this size is served in arrival order: the first answers come long before the last
STARTUP_FAIRNESS_FLOOR = "0.3"
STARTUP_MIN_SUCCESS_RATE = "100%"
# all 5,000 runs must have been in flight together
STARTUP_MIN_IN_FLIGHT = 5000
