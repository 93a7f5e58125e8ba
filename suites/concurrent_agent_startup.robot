*** Settings ***
Documentation       Concurrent agent startup: many customers start their agents at the same moment
...                 and each gets its own agent, its own data and a fast answer (seed 002, tests 1-4).
...
...                 The quick profile (the default) runs 20 users; the full profile runs 100:
...                 ``--variable STARTUP_USERS:100`` or ``--variablefile resources/env/load_full.py``.
...                 Every threshold below is a variable, e.g. ``--variable STARTUP_P95:5s``.
...
...                 All users start their agents in one burst, made by the first test that needs it
...                 and shared by the others; any test runs alone too (``robot -t "<test name>"``).

Resource            crosstalk/resources/load.resource

Suite Setup         Start Or Attach Platform
Suite Teardown      Load Suite Ends

Test Tags           performance    load


*** Variables ***
${STARTUP_USERS}            20
${STARTUP_TIMEOUT}          30s
# Agent startup = time from sending the message to the agent's first event.
${STARTUP_P95}              1s
${STARTUP_P99}              2s
${COMPLETION_P95}           2s
${PLATFORM_MEMORY_LIMIT}    4GB
${PLATFORM_CPU_LIMIT}       80%
${STARTUP_FAIRNESS_FLOOR}           0.7
# a run that never finished has no latency: the success rate keeps it from hiding
${STARTUP_MIN_SUCCESS_RATE}         100%
# messages in flight at once (sent, not yet answered); resources/env/load_5000.py asks for all 5,000
${STARTUP_MIN_IN_FLIGHT}            1


*** Test Cases ***
Every User Gets Their Own Agent
    [Documentation]    Seed 002 test 1: one unique agent run per user, no id collisions, each agent
    ...    answering only its own user's message.
    [Tags]    isolation
    ${startup} =    Users Start Agents At The Same Moment    ${STARTUP_USERS}    timeout=${STARTUP_TIMEOUT}
    Every Agent Started Once For Its Own User    ${startup}

No Data Crosses Between Concurrent Users
    [Documentation]    Seed 002 test 2: no user's canary, run, thread or event reached anyone else,
    ...    in frames, REST, the databases or Redis.
    [Tags]    isolation
    ${startup} =    Users Start Agents At The Same Moment    ${STARTUP_USERS}    timeout=${STARTUP_TIMEOUT}
    No User Saw Another User's Data    ${startup}

What Every User Saw Streamed Is What Was Stored
    [Documentation]    The persistence oracle over the load round: each run's question and answer are stored in
    ...    its own thread with its ids, counters equal rows, one terminal event per run.
    [Tags]    isolation    persistence
    ${startup} =    Users Start Agents At The Same Moment    ${STARTUP_USERS}    timeout=${STARTUP_TIMEOUT}
    What Was Streamed Should Be What Was Stored    ${startup}

Agents Start Fast Under Concurrent Load
    [Documentation]    Seed 002 test 3: agent startup percentiles, the platform's memory and CPU, the
    ...    fairness between users and the success rate stay within the service levels.
    ${startup} =    Users Start Agents At The Same Moment    ${STARTUP_USERS}    timeout=${STARTUP_TIMEOUT}
    Agent Startup Should Meet Its Service Levels    ${startup}
    ...    p95=${STARTUP_P95}    p99=${STARTUP_P99}    completion_p95=${COMPLETION_P95}
    ...    memory=${PLATFORM_MEMORY_LIMIT}    cpu=${PLATFORM_CPU_LIMIT}    fairness=${STARTUP_FAIRNESS_FLOOR}
    ...    success_rate=${STARTUP_MIN_SUCCESS_RATE}    in_flight=${STARTUP_MIN_IN_FLIGHT}

Every WebSocket Stays Up For The Whole Suite
    [Documentation]    Seed 002 test 4: every user's WebSocket, opened by the startup burst (in the
    ...    first test of this suite that needed it), is still open now, none dropped, and 100 % of the
    ...    events reached their own user.
    [Tags]    websocket
    ${startup} =    Users Start Agents At The Same Moment    ${STARTUP_USERS}    timeout=${STARTUP_TIMEOUT}
    Every Connection Stayed Up And Routed Correctly    ${startup}
