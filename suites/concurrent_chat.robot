*** Settings ***
Documentation       Concurrent chat (seed 000): ten users log in, connect and chat at the same moment.
...
...                 Each gets a correct answer to their own message, the run timings are
...                 logged per user (time to first event, time to completion), and the
...                 isolation oracle finds no data of one user anywhere another user can see.
...                 The whole round (first send to last answer) must take less than ${MAX_ROUND_TIME}.

Resource            crosstalk/resources/isolation.resource

Suite Setup         Chat Suite Starts
Suite Teardown      Isolation Suite Ends
Test Teardown       Disconnect All

Test Tags           isolation    golden-path    concurrency


*** Variables ***
${CONCURRENT_USERS}         10
${USERS_WITH_SECRETS}       5
${MAX_ROUND_TIME}           10s


*** Test Cases ***
Ten Users Chat At Once And Each Gets The Answer To Their Own Message
    [Documentation]    Concurrent logins, concurrent connections, messages sent in parallel with unique content.
    ${users} =    Connected Users    ${CONCURRENT_USERS}    prefix=concurrent
    ${runs} =    Every User Asks With Their Canary    ${users}    What does my cloud plan cost this month?
    Each User Should Get Their Own Answer    ${runs}
    Chat Round Should Finish Within    ${runs}    ${MAX_ROUND_TIME}
    No Data Should Cross Between Users    ${users}
    What Was Streamed Should Be What Was Stored    ${users}

Users With Secrets Never See Each Other's Secrets
    [Documentation]    Each user tells the agent a secret, then asks about it: the tool finds only their own.
    ${users} =    Connected Users    ${USERS_WITH_SECRETS}    prefix=secret
    ${firsts} =    Every User Asks With Their Canary    ${users}    Remember my secret project code
    Each User Should Get Their Own Answer    ${firsts}
    ${follow_ups} =    Every User Asks Again In Their Thread    ${firsts}    What was my secret project code?
    Each User Should Get Their Own Answer    ${follow_ups}
    Answers Should Recall Only Their Own Earlier Message    ${firsts}    ${follow_ups}
    No Data Should Cross Between Users    ${users}
    What Was Streamed Should Be What Was Stored    ${users}
