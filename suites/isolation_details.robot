*** Settings ***
Documentation       Isolation details (seed 004, and test 5 of seed 002): what one user's agent
...                 does never touches another user.
...
...                 Events reach only their user; the agent's tool draws only on the caller's
...                 data; one user's failing agent leaves the others complete and correct; and
...                 no user can read, list, message into or delete another user's thread, over
...                 REST or the WebSocket, nor leave a trace of it in the database.

Resource            crosstalk/resources/isolation.resource

Suite Setup         Isolation Details Setup
Suite Teardown      Isolation Suite Ends
Test Teardown       Disconnect All

Test Tags           isolation


*** Test Cases ***
Events Reach Only Their User
    [Documentation]    Four users run two slow agents each at the same time; every event lands on its owner's socket.
    [Tags]    events
    ${users} =    Connected Users    4    prefix=events
    ${runs} =    Users Ask At The Same Time In Slow Runs    ${users}    How fast is my pipeline?
    Each User Should Get Their Own Answer    ${runs}
    Events Should Reach Only Their User    @{users}

Tool Results Only Draw On The Caller's Data
    [Documentation]    Each user's tool returns that user's own earlier message of the thread, and nothing else.
    [Tags]    tools
    ${users} =    Connected Users    3    prefix=tools
    ${firsts} =    Every User Asks With Their Canary    ${users}    My monthly budget is private
    Each User Should Get Their Own Answer    ${firsts}
    ${follow_ups} =    Every User Asks Again In Their Thread    ${firsts}    What budget did I mention?
    Each User Should Get Their Own Answer    ${follow_ups}
    Each Tool Result Should Hold Only Its User's Message    ${firsts}    ${follow_ups}
    Canaries Should Not Leak    @{users}

One User's Agent Failure Leaves The Others Complete And Correct
    [Documentation]    The ``[[fail]]`` run ends in agent_error; the other users' runs at the same moment complete.
    [Tags]    failure
    ${unlucky} =    A Connected User    unlucky
    ${others} =    Connected Users    3    prefix=bystander
    ${failing} =    User Asks    ${unlucky}    Please break [[fail]] ${unlucky.canary}
    ${runs} =    Every User Asks With Their Canary    ${others}    Is my data encrypted?
    Run Of User Should Fail Alone    ${failing}    ${runs}
    No Data Should Cross Between Users    ${others}

A User Cannot Reach Another User's Thread
    [Documentation]    Alice cannot read, list, message into or delete Bob's thread; Bob's thread stays intact.
    [Tags]    bola    security    needs:db
    ${alice} =    A Connected User    alice
    ${bob} =    A Connected User    bob
    ${bob_run} =    User Asks    ${bob}    Keep my notes safe ${bob.canary}
    Agent Should Answer The Question    ${bob_run}
    User Should Not Reach Thread Over REST    ${alice}    ${bob_run}
    User Should Not Message Into Thread Over WebSocket    ${alice}    ${bob_run}
    Thread Should Be Stored For Its Owner    ${bob}    ${bob_run}
    Thread Should Hold No Message Of    ${alice}    ${bob_run}
    Check Isolation    ${alice}    ${bob}

Stored Conversations Belong Only To Their Users
    [Documentation]    Seed 002 test 5: each user's state is stored under that user, in that user's own
    ...    threads, and the REST views, filtered by the caller's token, show only it.
    [Tags]    persistence    needs:db
    ${users} =    Connected Users    3    prefix=state
    ${runs} =    Every User Asks With Their Canary    ${users}    Save my deployment notes
    Each User Should Get Their Own Answer    ${runs}
    Each User Should Own Exactly Their Conversation    ${runs}
    Rows Should Stay In Own Threads    @{users}
    Threads Listed Should Be Own Threads    @{users}


*** Keywords ***
Isolation Details Setup
    [Documentation]    The platform is up and its stores are open for the database checks.
    Chat Suite Starts
    Connect To The Platform Stores

Each Tool Result Should Hold Only Its User's Message
    [Documentation]    The follow-up's tool result holds exactly its user's first message.
    [Arguments]    ${firsts}    ${follow_ups}
    FOR    ${first}    ${again}    IN ZIP    ${firsts}    ${follow_ups}
        Tool Results Should Only Hold Own Messages    ${again}    ${first.content}
    END
