*** Settings ***
Documentation       Creating a workspace writes three stores in one all-or-nothing transaction.
...
...                 The auth database counts the user's workspaces, the backend database holds the
...                 workspace, the analytics store records a workspace_created event.  The platform
...                 coordinates them by two-phase commit (PREPARE TRANSACTION / COMMIT PREPARED); when a
...                 step fails, every store is rolled back.  Failures are injected on the target itself
...                 through the contract's optional hook (``X-Crosstalk-Inject``, advertised in
...                 ``/health``); a target without it skips the rollback tests (needs:fault-injection).

Resource            crosstalk/resources/workspace.resource

Suite Setup         Start Or Attach Platform
Suite Teardown      Release Platform

Test Tags           transaction    workspace    needs:db    needs:auth-db    needs:analytics-db


*** Test Cases ***
A Workspace Is Recorded In All Three Stores
    [Documentation]    One successful transaction: auth count, workspace row and event agree.
    ${alice} =    A Logged-In User    founder
    Create Workspace    ${alice}    Quarterly planning
    Workspace State Should Be Consistent    ${alice}    expected=1

A Backend Failure Rolls Everything Back
    [Documentation]    Step 2 fails: the auth count already prepared in step 1 is rolled back too.
    [Tags]    rollback    needs:fault-injection
    Failure Injection Should Be Available    backend
    ${bob} =    A Logged-In User    backendfail
    Workspace Creation Should Fail Cleanly    ${bob}    backend

An Analytics Failure Rolls Everything Back
    [Documentation]    Step 3 fails: the prepared auth and backend writes are rolled back.
    [Tags]    rollback    needs:fault-injection
    Failure Injection Should Be Available    analytics
    ${carol} =    A Logged-In User    analyticsfail
    Workspace Creation Should Fail Cleanly    ${carol}    analytics

A Partially Applied Workspace Is Detected And Reported
    [Documentation]    A workspace row without its count and event (a crashed coordinator without 2PC)
    ...    is reported as a partially applied transaction naming the stores that hold it.
    [Tags]    detection
    ${dave} =    A Logged-In User    partial
    Create Workspace    ${dave}    Real one
    ${half} =    Leave A Half Applied Workspace    ${dave}
    Run Keyword And Expect Error    *partially applied cross-service transaction*backend (2 workspace rows)*
    ...    Workspace State Should Be Consistent    ${dave}
    [Teardown]    Remove Half Applied Workspace    ${half}

Concurrent Workspace Transactions Finish Fast And Stay Consistent
    [Documentation]    Four users create two workspaces each at once; every transaction under 5 s.
    [Tags]    concurrency
    ${users} =    Logged-In Users    4    prefix=team
    Create Workspaces Concurrently    ${users}    per_user=2    limit=${WORKSPACE_TIME_LIMIT}
    Every User's Workspaces Should Be Consistent    ${users}    2
