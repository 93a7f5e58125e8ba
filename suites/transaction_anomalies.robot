*** Settings ***
Documentation       Agents that share token budgets race each other in PostgreSQL.
...
...                 What PostgreSQL promises at each isolation level (Kleppmann's Hermitage tables):
...                 lost update (P4) happens under READ COMMITTED and is refused with 40001 under
...                 REPEATABLE READ; read skew (G-single) happens under READ COMMITTED only;
...                 write skew (G2-item) happens under REPEATABLE READ and is refused under SERIALIZABLE;
...                 aborted reads (G1a) never happen.  Deadlocks are detected
...                 (40P01) and a retried loser applies exactly once; a pool smaller than the demand
...                 queues callers instead of failing them.  Everything runs in a scratch database.

Resource            crosstalk/resources/transactions.resource

Suite Setup         Prepare A Scratch Budget Ledger
Suite Teardown      Drop Scratch Database
Test Teardown       Every Agent Lets Go Of The Database
Test Tags           transaction    race    needs:db


*** Test Cases ***
Two Agents Updating The Same Budget Lose An Update Under Read Committed
    [Documentation]    Both agents read 10 and write 11: one top-up silently disappears.
    [Tags]    p4    lost-update
    Both Budgets Hold 10 Tokens
    ${run}=    Two Agents Add One Token To Budget 1 From What They Read    READ COMMITTED
    Anomaly Should Have Occurred    ${run}
    Budget 1 Should Hold 11 Tokens

Repeatable Read Refuses The Second Budget Update With A Serialization Failure
    [Documentation]    The second writer gets 40001 instead of overwriting; the first top-up stands.
    [Tags]    p4    lost-update
    Both Budgets Hold 10 Tokens
    ${run}=    Two Agents Add One Token To Budget 1 From What They Read    REPEATABLE READ
    Anomaly Should Have Been Prevented    ${run}    sqlstate=40001    loser=T2
    Transaction Should Have Committed    ${run}    T1
    Budget 1 Should Hold 11 Tokens

Retrying The Refused Budget Update Keeps Both Top-Ups
    [Documentation]    The refused agent re-reads and writes again: both top-ups count exactly once.
    [Tags]    p4    lost-update    retry
    Both Budgets Hold 10 Tokens
    ${run}=    Two Agents Add One Token To Budget 1 From What They Read    REPEATABLE READ    retry=${True}
    Losers Should Have Been Retried    ${run}    sqlstate=40001
    Budget 1 Should Hold 12 Tokens

Two Agents Going Off Duty Leave Nobody On Call Under Repeatable Read
    [Documentation]    Each sees a colleague on duty in its snapshot; both commit and nobody is left.
    [Tags]    g2-item    write-skew
    Two Agents Are On Call
    ${run}=    Both Agents Go Off Duty After Checking Someone Else Is On Call    REPEATABLE READ
    Anomaly Should Have Occurred    ${run}
    Transaction Should Have Committed    ${run}    T2

Serializable Refuses The Second Agent Going Off Duty
    [Documentation]    SSI sees the read/write dependency cycle; the second commit fails with 40001.
    [Tags]    g2-item    write-skew
    Two Agents Are On Call
    ${run}=    Both Agents Go Off Duty After Checking Someone Else Is On Call    SERIALIZABLE
    Anomaly Should Have Been Prevented    ${run}    sqlstate=40001    loser=T2
    Invariant Should Hold    ${run}

An Auditor Sees Tokens Appear Out Of Nowhere Under Read Committed
    [Documentation]    Each statement sees the latest commit, so a transfer between two reads skews the sum.
    [Tags]    g-single    read-skew
    Both Budgets Hold 10 Tokens
    ${run}=    An Auditor Sums Both Budgets While An Agent Moves Five Tokens    READ COMMITTED
    Anomaly Should Have Occurred    ${run}
    Transaction Should Have Committed    ${run}    T2

An Auditor Sees A Consistent Snapshot Under Repeatable Read
    [Documentation]    The snapshot hides the concurrent transfer; no transaction has to be refused.
    [Tags]    g-single    read-skew
    Both Budgets Hold 10 Tokens
    ${run}=    An Auditor Sums Both Budgets While An Agent Moves Five Tokens    REPEATABLE READ
    Anomaly Should Have Been Prevented    ${run}
    Transaction Should Have Committed    ${run}    T1

An Agent Never Sees Another Agent's Aborted Budget Change
    [Documentation]    No isolation level shows a write that is uncommitted or rolled back.
    [Tags]    g1a    dirty-read
    [Template]    Aborted Budget Change Should Stay Invisible Under
    READ COMMITTED
    REPEATABLE READ
    SERIALIZABLE

Transfers In Opposite Order Deadlock And The Retried Loser Applies Exactly Once
    [Documentation]    PostgreSQL breaks the lock cycle with 40P01; retrying the loser applies every transfer once.
    [Tags]    deadlock    retry
    Both Budgets Hold 100 Tokens
    ${run}=    Two Agents Move Tokens Between Budgets In Opposite Order
    Losers Should Have Been Retried    ${run}    sqlstate=40P01
    Invariant Should Hold    ${run}

A Second Top-Up Waits For The Row Lock And Both Top-Ups Count
    [Documentation]    Atomic increments queue behind the row lock instead of losing an update.
    [Tags]    row-lock
    Both Budgets Hold 10 Tokens
    Agents T1 And T2 Open Transactions Under READ COMMITTED
    Agent T1 Tops Up Budget 1 By One
    Agent T2 Starts Topping Up Budget 1 By One
    Agent T2 Should Be Waiting For The Row Lock Of Agent T1
    Agent T1 Commits
    Agent T2 Finishes
    Budget 1 Should Hold 12 Tokens

Twenty Agents Share Five Database Connections And Every Write Lands
    [Documentation]    Demand is four times the pool; fifteen callers queue and every write succeeds.
    [Tags]    pool
    Agents Share A Pool Of 5 Connections
    ${report}=    20 Agents Write To The Database At Once
    Every Write Should Have Landed After Queueing    ${report}    expected_waits=${15}
    ${again}=    20 Agents Write To The Database At Once
    Pool Should Have Recovered    ${again}

Twenty Agents Topping Up One Budget At Once Keep Every Token After Retries
    [Documentation]    Under REPEATABLE READ concurrent writers of one row are refused (40001); retried, all count.
    [Tags]    pool    retry    lost-update
    Both Budgets Hold 10 Tokens
    Agents Share A Pool Of 5 Connections
    ${report}=    20 Agents Top Up Budget 1 By One At Once Under REPEATABLE READ
    Pool Success Rate Should Be At Least    ${report}    100
    Concurrent Operations Should Have Been Retried    ${report}    sqlstate=40001
    Budget 1 Should Hold 30 Tokens

An Exhausted Pool Without A Queue Refuses Callers And Then Recovers
    [Documentation]    The bare pool refuses the fifteen callers beyond its size; the next small batch is fully served.
    [Tags]    pool
    Agents Share A Pool Of 5 Connections Without A Queue
    ${report}=    20 Agents Write To The Database At Once
    Pool Exhaustion Should Have Been Detected    ${report}    refused=${15}
    ${again}=    5 Agents Write To The Database At Once
    Pool Should Have Recovered    ${again}


*** Keywords ***
Aborted Budget Change Should Stay Invisible Under
    [Documentation]    One row of the G1a template: the reader only ever sees the committed 10 tokens.
    [Arguments]    ${isolation}
    Both Budgets Hold 10 Tokens
    ${run}=    An Agent Reads Budget 1 While Another Changes It And Aborts    ${isolation}
    Anomaly Should Have Been Prevented    ${run}
    Transaction Should Only Have Read    ${run}    T2    10
    Every Agent Lets Go Of The Database
