*** Settings ***
Documentation       Real concurrent users with data isolation (seed 001): twelve users at once.
...
...                 Every user's answers are correct and their own; the full isolation
...                 oracle checks frames, REST views, database rows, Redis values and
...                 sessions; latency (mean, median, p95, max), throughput and the Jain
...                 fairness index of per-user latency are measured and held to thresholds.
...                 Override a threshold with e.g. ``--variable MAX_MEAN_LATENCY:2s``.

Resource            crosstalk/resources/isolation.resource

Suite Setup         Chat Suite Starts
Suite Teardown      Isolation Suite Ends
Test Teardown       Disconnect All

Test Tags           isolation    performance    concurrency


*** Variables ***
${TENANTS}                  12
${MAX_MEAN_LATENCY}         5s    # robocop: off=VAR02
${MIN_THROUGHPUT}           2    # robocop: off=VAR02
${MIN_FAIRNESS}             0.7    # robocop: off=VAR02
# agents that think like a real model: without it latency is all scheduler noise and fairness means little
${AGENT_PACE}               [[slow:100]]


*** Test Cases ***
Twelve Users Get Fast, Fair And Isolated Answers
    [Documentation]    One message each, all at once: correct answers, thresholds met, no data crosses.
    ${users} =    Connected Users    ${TENANTS}    prefix=tenant
    ${runs} =    Every User Asks With Their Canary    ${users}    How can I cut the cost of my storage? ${AGENT_PACE}
    Each User Should Get Their Own Answer    ${runs}
    Chat Round Should Be Fast And Fair    ${runs}
    No Data Should Cross Between Users    ${users}
    What Was Streamed Should Be What Was Stored    ${users}

Service Stays Fast, Fair And Isolated Over Consecutive Rounds
    [Documentation]    Three rounds in the same threads: each round meets the thresholds and recalls only own history.
    ${users} =    Connected Users    ${TENANTS}    prefix=steady
    ${first} =    Every User Asks With Their Canary    ${users}    Is my login token setup secure? ${AGENT_PACE}
    Each User Should Get Their Own Answer    ${first}
    ${second} =    Every User Asks Again In Their Thread    ${first}
    ...    Which of my settings slow things down? ${AGENT_PACE}
    Each User Should Get Their Own Answer    ${second}
    Answers Should Recall Only Their Own Earlier Message    ${first}    ${second}
    Chat Round Should Be Fast And Fair    ${second}
    No Data Should Cross Between Users    ${users}
    What Was Streamed Should Be What Was Stored    ${users}
