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

Test Teardown       Close All Race Sockets

Test Tags           race


*** Test Cases ***
Fifty Parallel Notes Are All Counted
    [Documentation]    The thread's message counter matches the stored messages after 50 parallel sends.
    [Tags]    counter    lost-update
    ${alice} =    A Racer    counter
    ${thread} =    A Thread Of    ${alice}
    When User Adds Notes To Thread In Parallel    ${alice}    ${thread}    ${PARALLEL_SENDS}
    Then Thread Should Count Every Message    ${alice}    ${thread}    ${PARALLEL_SENDS + 2}

A Refresh Token Is Spent Exactly Once
    [Documentation]    Several clients refresh with one token at once: one wins, the rest get 401.
    [Tags]    token    refresh
    ${alice} =    A Racer    refresher
    ${race} =    When Clients Refresh With The Same Token At Once    ${alice}    ${CONCURRENT_REFRESHES}
    Then Exactly One Refresh Should Win    ${race}
    And No Token Should Be Issued Twice    ${race}
    And Reusing The Raced Token Should Revoke The Family    ${race}

A Chat Survives A Token Refresh
    [Documentation]    The open socket finishes its run after a refresh; a new socket uses the new token.
    [Tags]    token    refresh    websocket
    ${alice} =    A Racer    chatter
    Refresh During An Active Chat Should Keep The Chat Going    ${alice}

Thirty Users Open And Close Sessions Together
    [Documentation]    No session record is lost, duplicated, left behind or owned by the wrong user.
    [Tags]    session    needs:redis
    ${users} =    Racers    ${SESSION_USERS}    prefix=session
    ${sockets} =    When All Users Connect At Once    ${users}
    Then Each User Should Hold Exactly One Own Session    ${users}
    When Disconnect All At Once    ${sockets}
    Then No Session Should Remain    ${users}

Fifty Simultaneous Connections Keep Their Own Ordered Events
    [Documentation]    50 users connect, chat and disconnect together: events stay private and in order,
    ...    and every session record goes away.
    [Tags]    websocket    isolation    order    needs:redis
    ${users} =    Racers    ${SOCKET_USERS}    prefix=socket
    ${sockets} =    All Users Connect At Once    ${users}
    ${frames} =    When All Users Chat At Once    ${sockets}
    Then No Connection Should Receive Another Users Events    ${sockets}    ${frames}
    And Every Run Should Arrive In Order    ${frames}
    When Disconnect All At Once    ${sockets}
    Then No Session Should Remain    ${users}
    [Teardown]    Close All Race Sockets

Only One Writer Wins A User's Cache Key
    [Documentation]    Concurrent check-then-set on one user-scoped Redis key: SET NX and WATCH/MULTI.
    [Tags]    redis    cache    needs:redis
    ${alice} =    A Racer    cache
    Race Set If Absent On User Key    ${alice}    ${REDIS_WRITERS}
    Race Watched Transactions On User Key    ${alice}    ${REDIS_WRITERS}

A New Thread Shows Up In The Cached List At Once
    [Documentation]    Invalidation after a write: the next read never serves the stale cached list.
    [Tags]    redis    cache    stale
    ${alice} =    A Racer    fresh
    Thread List Should Show A New Thread At Once    ${alice}

Cached Thread Lists Never Cross Users
    [Documentation]    Users read their cached thread lists together; each sees only its own threads.
    [Tags]    redis    cache    isolation
    ${users} =    Racers With Canary Threads    4    prefix=lists
    Thread Lists Should Never Cross Users    ${users}

Hanging Up Mid-Request Never Hands Titles To Another User
    [Documentation]    The ChatGPT incident (redis-py 2624): requests cancelled while their Redis reply
    ...    is in flight must not leave a pooled connection one reply behind.
    [Tags]    redis    isolation    chatgpt-incident
    ${readers} =    Racers With Canary Threads    ${TITLE_READERS}    prefix=reader
    ${leavers} =    Racers With Canary Threads    ${HANGING_UP_USERS}    prefix=leaver
    ${seen} =    When Read Thread Titles While Others Hang Up    ${readers}    ${leavers}
    Then No User Should Have Read Another Users Titles    ${seen}
