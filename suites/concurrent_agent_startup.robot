*** Settings ***
Documentation       Concurrent agent startup: many customers start their agents at the same moment
...                 and each gets its own agent, its own data and a fast answer (seed 002, tests 1-4).
...
...                 The quick profile (the default) runs 20 users; the full profile runs 100:
...                 ``--variable STARTUP_USERS:100`` or ``--variablefile resources/env/load_full.py``.
...                 Every threshold below is a variable, e.g. ``--variable STARTUP_P95:5s``.

Resource            crosstalk/resources/load.resource

Suite Setup         Start Agents For Every User
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
# filled by the suite setup: startup -> the load run, sockets still open
&{LOAD}                     &{EMPTY}


*** Test Cases ***
Every User Gets Their Own Agent
    [Documentation]    Seed 002 test 1: one unique agent run per user, no id collisions, each agent
    ...    answering only its own user's message.
    [Tags]    isolation
    Every Agent Started Once For Its Own User    ${LOAD}[startup]

No Data Crosses Between Concurrent Users
    [Documentation]    Seed 002 test 2: no user's canary, run, thread or event reached anyone else,
    ...    in frames, REST, the databases or Redis.
    [Tags]    isolation
    No User Saw Another User's Data    ${LOAD}[startup]

What Every User Saw Streamed Is What Was Stored
    [Documentation]    The persistence oracle over the load round: each run's question and answer are stored in
    ...    its own thread with its ids, counters equal rows, one terminal event per run.
    [Tags]    isolation    persistence
    What Was Streamed Should Be What Was Stored    ${LOAD}[startup]

Agents Start Fast Under Concurrent Load
    [Documentation]    Seed 002 test 3: agent startup percentiles, the platform's memory and CPU, the
    ...    fairness between users and the success rate stay within the service levels.
    Service Levels Should Hold    ${LOAD}[startup]
    ...    p95 < ${STARTUP_P95}
    ...    p99 < ${STARTUP_P99}
    ...    completion.p95 < ${COMPLETION_P95}
    ...    platform_memory < ${PLATFORM_MEMORY_LIMIT}
    ...    platform_cpu < ${PLATFORM_CPU_LIMIT}
    ...    fairness > ${STARTUP_FAIRNESS_FLOOR}
    ...    success_rate >= ${STARTUP_MIN_SUCCESS_RATE}
    ...    in_flight_peak >= ${STARTUP_MIN_IN_FLIGHT}

Every WebSocket Stays Up For The Whole Suite
    [Documentation]    Seed 002 test 4: every user's WebSocket, opened before the first test, is still
    ...    open now, none dropped, and 100 % of the events reached their own user.
    [Tags]    websocket
    Every Connection Stayed Up And Routed Correctly    ${LOAD}[startup]


*** Keywords ***
Start Agents For Every User
    [Documentation]    All users connect, then start their agents at the same moment.
    Start Or Attach Platform
    ${run} =    Users Start Agents At The Same Moment    ${STARTUP_USERS}    timeout=${STARTUP_TIMEOUT}
    Set To Dictionary    ${LOAD}    startup=${run}
