*** Settings ***
Documentation       Starter suite: users chat with the platform at the same moment; each gets the answer to
...                 their own question and no data of one user reaches another.
...
...                 The target comes from profile.py (CROSSTALK_* environment variables); with none set,
...                 Crosstalk starts its reference platform and runs against it.

Resource            crosstalk/resources/isolation.resource

Suite Setup         Chat Suite Starts
Suite Teardown      Isolation Suite Ends
Test Teardown       Disconnect All

Test Tags           starter


*** Variables ***
${STARTER_USERS}        5


*** Test Cases ***
One User Gets An Answer To Their Own Question
    [Documentation]    The simplest round trip: log in, connect, ask, get the answer to this question.
    [Tags]    smoke
    ${alice} =    A Connected User    alice
    ${run} =    User Asks    ${alice}    What does my plan cost? ${alice.canary}
    Agent Should Answer The Question    ${run}

Users Chat At Once And No Data Crosses Between Them
    [Documentation]    Concurrent logins and messages with unique canaries; the isolation oracle finds no leak.
    [Tags]    isolation
    ${users} =    Connected Users    ${STARTER_USERS}    prefix=starter
    ${runs} =    Every User Asks With Their Canary    ${users}    What does my cloud plan cost this month?
    Each User Should Get Their Own Answer    ${runs}
    No Data Should Cross Between Users    ${users}
