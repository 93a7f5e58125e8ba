*** Settings ***
Documentation       What the user saw streamed is what the platform stored, and nothing else stays behind.
...
...                 The persistence oracle reconciles every run's events with the stored thread (REST, and
...                 the rows where the database is reachable); a deleted thread vanishes from every view at
...                 once; counters stay exact when different writers hit one user at the same moment; a
...                 failed cross-service transaction leaves no prepared transaction or lock; and one user's
...                 chat does not slow down as other users' data piles up (seeds 000, 003, 004).

Resource            crosstalk/resources/integrity.resource

Suite Setup         Chat Suite Starts
Suite Teardown      Chat Suite Ends
Test Teardown       Disconnect All

Test Tags           stored-truth


*** Test Cases ***
Streamed Answers Are Stored In Their Own Threads
    [Documentation]    Runs interleaved over two threads (one of them failing): each question and answer is
    ...    stored in its run's own thread with its client_message_id and run_id, counters equal rows,
    ...    run status equals the terminal event, and exactly one terminal event was streamed per run.
    [Tags]    persistence    websocket
    ${alice} =    A Connected User    alice
    ${runs} =    User Chats In Two Threads At Once    ${alice}
    What Was Streamed Should Be What Was Stored    ${runs}

A Deleted Thread Is Gone From Every View At Once
    [Documentation]    After the thread list was read (and cached), DELETE makes the thread vanish from get,
    ...    messages and the list, cached or not, and from the stores.
    [Tags]    persistence    delete
    ${alice} =    A Connected User    alice
    ${thread} =    A Thread With Messages    ${alice}
    Deleted Thread Should Be Gone From Every View    ${alice}    ${thread}

Counters Stay Exact Under Different Writers At Once
    [Documentation]    Notes over REST, agent runs over the WebSocket and deletes of other threads, all at once
    ...    on one user: the thread's message_count equals its stored messages.
    [Tags]    multi-writer    concurrency
    ${alice} =    A Logged-In User    alice
    Different Writers At Once Should Keep The Counter Exact    ${alice}    notes=${CONCURRENT_NOTES}
    ...    runs=${CONCURRENT_RUNS}    deletes=${CONCURRENT_DELETES}

A Failed Workspace Transaction Leaves No Debris
    [Documentation]    Seed 000: after the backend step failed and everything visible was rolled back, no
    ...    prepared transaction or lock remains and the user's next transaction is answered promptly.
    [Tags]    debris    transaction    needs:fault-injection
    A Failed Workspace Leaves Nothing Behind    backend

Chat Cost Does Not Grow With Other Users' Data
    [Documentation]    One user's median chat latency, before and after ${BACKGROUND_USERS} other users' threads,
    ...    messages and Redis keys exist: the ratio stays under ${MAX_LATENCY_RATIO}.
    [Tags]    cost-growth    needs:db    needs:redis
    ${alice} =    A Logged-In User    alice
    Chat Latency Should Not Grow With Other Users' Data    ${alice}    background_users=${BACKGROUND_USERS}
    ...    threads_per_user=${BACKGROUND_THREADS}    messages_per_thread=${BACKGROUND_MESSAGES}
    ...    keys_per_user=${BACKGROUND_KEYS_PER_USER}    probes=${LATENCY_PROBES}
    ...    max_ratio=${MAX_LATENCY_RATIO}    min_growth=${MIN_LATENCY_GROWTH}
