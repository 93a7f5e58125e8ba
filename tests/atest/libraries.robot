*** Settings ***
Documentation       Each library's main keywords, and the exact wording of their failures.

Library             CrosstalkAuth
Library             CrosstalkChat
Library             CrosstalkIsolation
Library             CrosstalkStores
Library             CrosstalkRaces
Library             CrosstalkSecurity
Library             CrosstalkTransactions
Library             CrosstalkLoad
Library             CrosstalkWorkspace

Suite Teardown      Disconnect All


*** Test Cases ***
Auth Logs In And Names A Wrong Refusal
    [Documentation]    A wrong password is refused; a right one fails the check, naming user and status.
    ${alice} =    Create Test User    alice
    Log In    ${alice}
    Login Should Be Refused    ${alice.email}    not-the-password
    Run Keyword And Expect Error    Login of ${alice.email} with password * answered 200, expected 401.
    ...    Login Should Be Refused    ${alice.email}    ${alice.password}

Chat Completes A Run And Words A Timeout
    [Documentation]    A run completes in order; a timed-out wait names user, connection, awaited type, timeout.
    ${alice} =    Create Test User    alice
    Log In    ${alice}
    Connect    ${alice}
    ${run} =    Send Message    ${alice}    hello
    Wait For Run To Complete    ${run}
    Run Events Should Be In Order    ${run}
    Run Keyword And Expect Error
    ...    User 'alice' (connection alice#1) did not receive agent_never_sent within 0.3 s. Last frames: *
    ...    Wait For Event    ${alice}    agent_never_sent    timeout=0.3s
    [Teardown]    Disconnect All

Chat Words A Refused Connection
    [Documentation]    A bad token is refused with HTTP 401, and Connect says so; a good one fails the refusal check.
    ${alice} =    Create Test User    alice
    Log In    ${alice}
    Connection Should Be Refused    ${alice}    token=not-a-jwt
    ${message} =    Run Keyword And Expect Error    *
    ...    Connect    ${alice}    token=not-a-jwt
    Should Match    ${message}    WebSocket handshake of user 'alice' to * was refused with HTTP 401*
    Run Keyword And Expect Error    WebSocket of user 'alice' with token * was accepted: expected HTTP 401*
    ...    Connection Should Be Refused    ${alice}    timeout=0.5s
    [Teardown]    Disconnect All

Isolation Passes For Two Users And Needs Users
    [Documentation]    The oracle passes two isolated users (sessions rule asks the registry); no users is an error.
    ${alice} =    Create Test User    alice
    ${bob} =    Create Test User    bob
    Log In Users    ${{[$alice, $bob]}}
    Connect    ${alice}
    Connect    ${bob}
    ${run} =    Send Message    ${alice}    ${alice.canary}
    Wait For Run To Complete    ${run}
    Check Isolation    ${alice}    ${bob}
    Run Keyword And Expect Error    *No users given*    Check Isolation
    [Teardown]    Disconnect All

Stores Read Redis And Name A Missing Key
    [Documentation]    Redis reads work and a missing key is named in the failure.
    Connect To Redis    cache    ${REDIS_URL}
    Run Keyword And Expect Error    *crosstalk-atest-no-such-key*
    ...    Get Redis Value    cache    crosstalk-atest-no-such-key
    Redis Key Should Not Exist    cache    crosstalk-atest-no-such-key
    [Teardown]    Disconnect From All Stores

Stores Name A URL That Is Not Postgres
    [Documentation]    A wrong store URL fails with one line saying what to pass.
    Run Keyword And Expect Error    Postgres alias 'db': URL 'redis://*' is not a postgresql:// URL*
    ...    Connect To Postgres    db    redis://localhost:1/0

Chat Refuses A Handshake Without Credentials
    [Documentation]    No Authorization header is refused; the refusal check names the missing header when accepted.
    ${alice} =    Create Test User    alice
    Log In    ${alice}
    Connection Should Be Refused    ${alice}    token=${EMPTY}
    Run Keyword And Expect Error
    ...    WebSocket of user 'alice' with no Authorization header was refused, but not with HTTP 403: *HTTP 401*
    ...    Connection Should Be Refused    ${alice}    token=${EMPTY}    status=403
    [Teardown]    Disconnect All

Stores Word Session Records That Stay Behind
    [Documentation]    An open socket keeps its session record; expecting none names the user, the key
    ...    pattern, the last count, how long it was polled and why it matters.
    ${alice} =    Create Test User    alice
    Log In    ${alice}
    Connect    ${alice}
    Get Session Count    ${alice}    ==    1    timeout=5s
    Run Keyword And Expect Error
    ...    Session records of alice in Redis (session:${alice.user_id}:*) is 1, expected == 0: sessions are not removed when their socket closes (last value seen, polled * times for 0.3 s)
    ...    Get Session Count    ${alice}    ==    0    timeout=0.3s
    ...    message=sessions are not removed when their socket closes
    [Teardown]    Disconnect All

Races Let Exactly One Writer Win A Redis Key
    [Documentation]    Writers released at once by the barrier: one SET NX wins and is the stored value.
    ${alice} =    Create Test User    racer
    ${winner} =    Race Set If Absent On User Key    ${alice}    4
    Should Match Regexp    ${winner}    ^writer[1-4]$

Workspace Names The Stores Of A Half-Applied Transaction
    [Documentation]    A workspace in all three stores passes; a backend-only row is reported as a partially
    ...    applied transaction naming the stores that hold it.
    ${alice} =    Create Test User    founder
    Log In    ${alice}
    Create Workspace    ${alice}    atest
    Workspace State Should Be Consistent    ${alice}    expected=1
    ${half} =    Leave A Half Applied Workspace    ${alice}
    VAR    ${applied} =    auth (workspace_count=1), backend (2 workspace rows), analytics (1 events)
    VAR    ${report} =    stores applied: ${applied}; workspaces without event: ?'${half}'?
    Run Keyword And Expect Error
    ...    partially applied cross-service transaction for founder: *${report}
    ...    Workspace State Should Be Consistent    ${alice}
    [Teardown]    Remove Half Applied Workspace    ${half}

Transactions Need A Scratch Database First
    [Documentation]    Transactions without a scratch database fail with what to call first; the pool opens.
    Run Keyword And Expect Error    No scratch database in this suite: call Create Scratch Database first.
    ...    Open Transactions    t1    t2
    Create Scratch Database    prefix=crosstalk_atest
    Execute Scratch SQL    CREATE TABLE t (id int)
    Open Connection Pool    size=2
    [Teardown]    Drop Scratch Database

Load Runs A Small Closed Model
    [Documentation]    A two-user closed-model load run holds its error threshold.
    ${run} =    Run Chat Load    2    messages=1
    Get Load Metric    ${run}    errors    ==    0
    [Teardown]    Close Load Users    ${run}
