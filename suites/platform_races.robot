*** Settings ***
Documentation       Many users and many clients of one user hit the platform at the same instant.
...
...                 Counters stay exact, a refresh token is spent exactly once, sessions are neither
...                 lost nor left behind, sockets never see another user's events, cached thread lists
...                 never go stale or cross users, and the ChatGPT incident of March 2023 (a cancelled
...                 Redis read handing the next user the previous user's reply) cannot happen.

Resource            crosstalk/resources/races.resource

Suite Setup         Start Or Attach Platform
Suite Teardown      Release Platform

Test Teardown       Disconnect All    log_transcripts=${False}

Test Tags           race


*** Test Cases ***
Fifty Parallel Notes Are All Counted
    [Documentation]    The thread's message counter matches the stored messages after 50 parallel sends.
    [Tags]    counter    lost-update
    ${alice} =    A Connected User    counter
    ${thread} =    A Thread Of    ${alice}
    Send Messages Into Thread At Once    ${alice}    ${thread}    ${PARALLEL_SENDS}
    Thread Message Count Should Be Exact    ${alice}    ${thread}    ${PARALLEL_SENDS + 2}

A Refresh Token Is Spent Exactly Once
    [Documentation]    Several clients refresh with one token at once: one wins, the rest get 401.
    [Tags]    token    refresh
    ${alice} =    A Logged-In User    refresher
    ${race} =    Refresh Concurrently With One Token    ${alice}    ${CONCURRENT_REFRESHES}
    Exactly One Refresh Should Win    ${race}
    No Token Should Be Issued Twice    ${race}
    Reusing The Raced Token Should Revoke The Family    ${race}

A Chat Survives A Token Refresh
    [Documentation]    The open socket finishes its run after a refresh; a new socket uses the new token.
    [Tags]    token    refresh    websocket
    ${alice} =    A Connected User    chatter
    A Chat Should Survive A Token Refresh    ${alice}

Thirty Users Open And Close Sessions Together
    [Documentation]    No session record is lost, duplicated, left behind or owned by the wrong user.
    [Tags]    session    needs:redis
    ${users} =    Connected Users    ${SESSION_USERS}    prefix=session
    Each User Should Hold Exactly One Own Session    ${users}
    Disconnect All    log_transcripts=${False}
    No Session Should Remain    ${users}

Fifty Simultaneous Connections Keep Their Own Ordered Events
    [Documentation]    50 users connect, chat and disconnect together: events stay private and in order,
    ...    and every session record goes away.
    [Tags]    websocket    isolation    order    needs:redis
    ${users} =    Connected Users    ${SOCKET_USERS}    prefix=socket
    ${runs} =    Every User Asks    ${users}    check my numbers {canary}
    Events Should Stay Private And In Order    ${users}    ${runs}
    Disconnect All    log_transcripts=${False}
    No Session Should Remain    ${users}

Only One Writer Wins A User's Cache Key
    [Documentation]    Concurrent check-then-set on one user-scoped Redis key: SET NX and WATCH/MULTI.
    [Tags]    redis    cache    needs:redis
    ${alice} =    A Logged-In User    cache
    Race Set If Absent On User Key    ${alice}    ${REDIS_WRITERS}
    Race Watched Transactions On User Key    ${alice}    ${REDIS_WRITERS}

A New Thread Shows Up In The Cached List At Once
    [Documentation]    Invalidation after a write: the next read never serves the stale cached list.
    [Tags]    redis    cache    stale
    ${alice} =    A Logged-In User    fresh
    Thread List Should Show A New Thread At Once    ${alice}

Cached Thread Lists Never Cross Users
    [Documentation]    Users read their cached thread lists together; each sees only its own threads.
    [Tags]    redis    cache    isolation
    ${users} =    Users With Canary Threads    4    prefix=lists
    Thread Lists Should Never Cross Users    ${users}

Hanging Up Mid-Request Never Hands Titles To Another User
    [Documentation]    The ChatGPT incident (redis-py 2624): requests cancelled while their Redis reply
    ...    is in flight must not leave a pooled connection one reply behind.
    [Tags]    redis    isolation    chatgpt-incident
    ${readers} =    Users With Canary Threads    ${TITLE_READERS}    prefix=reader
    ${leavers} =    Users With Canary Threads    ${HANGING_UP_USERS}    prefix=leaver
    ${seen} =    Read Thread Titles While Others Hang Up    ${readers}    ${leavers}
    No User Should Have Read Another Users Titles    ${seen}
