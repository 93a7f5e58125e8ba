*** Settings ***
Documentation       The exact wording of the failures of Chat, Auth, Platform and Stores: what was awaited,
...                 what was refused, which credentials were wrong, which URL could not be reached.
...
...                 Masked values (tokens, passwords) and random ids are matched with ``*``; every other
...                 word is asserted as written.

Library             CrosstalkAuth
Library             CrosstalkChat
Library             CrosstalkPlatform
Library             CrosstalkStores

Test Teardown       Disconnect All


*** Test Cases ***
Auth Names Wrong Credentials At Login
    [Documentation]    A wrong password fails Log In with the user, the email, the status and the platform's body.
    ${alice} =    Create Test User    alice
    ${impostor} =    Evaluate    dataclasses.replace($alice, password="not-alices-password-at-all")
    ...    modules=dataclasses
    Run Keyword And Expect Error
    ...    Login of user 'alice' (${alice.email}) failed: HTTP 401 {"error":"invalid_credentials","message":"email or password is wrong"}
    ...    Log In    ${impostor}

Auth Names A Refresh And A Token That Were Not Refused
    [Documentation]    The refusal checks name the masked token, the status received and the one expected.
    ${alice} =    Create Test User    alice
    Log In    ${alice}
    Run Keyword And Expect Error    Refresh with *… answered 200, expected 401.
    ...    Refresh Should Be Refused    ${alice.tokens.refresh_token}
    Run Keyword And Expect Error    GET /auth/me with token *… answered 200, expected 401.
    ...    Me Should Be Refused    ${alice}
    Run Keyword And Expect Error    GET /auth/me with *… answered 401, expected 200.
    ...    Get Me    ${alice.tokens.access_token}x

Auth Asks For A Login First
    [Documentation]    Refreshing a user who never logged in says what to do.
    ${bob} =    Create Test User    bob
    Run Keyword And Expect Error    User 'bob' is not logged in: log in first.
    ...    Refresh Tokens    ${bob}

Chat Names The Run That Ended Otherwise
    [Documentation]    Waiting for completion of a failing run, or for failure of a completing run, names run and user.
    ${alice} =    Create Test User    alice
    Log In    ${alice}
    Connect    ${alice}
    ${failing} =    Send Message    ${alice}    please break [[fail]]
    Run Keyword And Expect Error    Run * of user 'alice' ended failed instead of completed: *[[]<- agent_error seq *] general: the agent failed on purpose ([[][[]fail]] directive)
    ...    Wait For Run To Complete    ${failing}
    ${fine} =    Send Message    ${alice}    what does my plan cost?
    Run Keyword And Expect Error    Run * of user 'alice' ended completed, expected agent_error: *
    ...    Wait For Run To Fail    ${fine}
    Run Keyword And Expect Error
    ...    Events of run * of user 'alice' are [[]'agent_started', *], which does not match 'started completed'.
    ...    Event Sequence Should Be    ${fine}    started completed

Chat Names A Failing Run That Completed Among Others
    [Documentation]    The runs of two users complete with their own answers; a run expected to fail that completes is named.
    ${users} =    Create Test Users    2    prefix=pair
    Log In Users    ${users}
    Connect Users    ${users}
    ${runs} =    Send Message From Each User    ${users}    how fast is my pipeline? {canary}
    Runs Should Complete With Their Own Answers    ${runs}    timeout=20s
    ${again} =    Send Message From Each User    ${users}    and now? {canary}
    Run Keyword And Expect Error    Run * of user 'pair01' ended completed, expected agent_error: *
    ...    Runs Should Complete With Their Own Answers    ${again}[1:]    failing=${again}[0]

Chat Follows Up In Each Thread And Names A Run That Did Not Recall
    [Documentation]    Follow-ups sent at once land in their own threads and recall them; crossed pairs are named.
    ${users} =    Create Test Users    2    prefix=recall
    Log In Users    ${users}
    Connect Users    ${users}
    ${firsts} =    Send Message From Each User    ${users}    my budget is {canary}
    Runs Should Complete With Their Own Answers    ${firsts}
    ${again} =    Send Follow-Up From Each User    ${firsts}    what was my budget?
    Runs Should Complete With Their Own Answers    ${again}
    Should Be Equal    ${again[0].thread_id}    ${firsts[0].thread_id}
    Runs Should Recall    ${again}    ${firsts}
    Run Keyword And Expect Error
    ...    2 of 2 runs did not recall their own earlier message: The tool did not find recall02's own earlier message | The tool did not find recall01's own earlier message
    ...    Runs Should Recall    ${again}    ${{ $firsts[::-1] }}

Chat Names A Socket That Stayed Open
    [Documentation]    Waiting for a close code on a socket nobody closes times out with user, connection and wait.
    ${alice} =    Create Test User    alice
    Log In    ${alice}
    Connect    ${alice}
    Run Keyword And Expect Error
    ...    Connection alice#1 of user 'alice' was still open after 0.3 s, expected close code 4401. Last frames: nothing
    ...    Connection Should Be Closed With Code    ${alice}    4401    timeout=0.3s

Chat Says Which Connection Is Missing
    [Documentation]    A user without a connection, and an unknown label, fail with what to do.
    ${carol} =    Create Test User    carol
    Run Keyword And Expect Error    User 'carol' has no connection: connect first.
    ...    Send Message    ${carol}    hello
    Run Keyword And Expect Error    No connection labelled 'nobody#9'. Known connections: none.
    ...    Disconnect    nobody#9

Platform Answers Healthy And Knows Its Capabilities
    [Documentation]    The reference platform is healthy and has every capability; an unknown one is refused.
    Platform Should Be Healthy    timeout=5s
    ${db} =    Target Has Capability    db
    Should Be True    ${db}
    VAR    ${unknown}    teleport    # a variable, so that a dry run does not convert it
    Run Keyword And Expect Error
    ...    ValueError: Argument 'capability' got value 'teleport' that cannot be converted to Capability: *
    ...    Require Capability    ${unknown}
    ${line} =    Clean Up Run    ctatest-no-such-run
    Should Start With    ${line}    Cleanup of run ctatest-no-such-run: 0 users, 0 threads deleted over the API

Stores Name An Unreachable URL In One Line
    [Documentation]    A closed port fails Connect To Redis and Connect To Postgres in one line naming alias and host.
    Run Keyword And Expect Error
    ...    Cannot connect Redis alias 'nowhere' to 127.0.0.1:1: Error 111 connecting to 127.0.0.1:1. Connection refused.
    ...    Connect To Redis    nowhere    redis://127.0.0.1:1/0
    Run Keyword And Expect Error
    ...    Cannot connect Postgres alias 'nowhere' to 127.0.0.1:1: connection to server at "127.0.0.1", port 1 failed: Connection refused*
    ...    Connect To Postgres    nowhere    postgresql://crosstalk@127.0.0.1:1/x
