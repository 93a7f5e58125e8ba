*** Settings ***
Documentation       Golden path: one user signs up, signs in, chats with the agents and signs out.
...
...                 Every step a real user takes, end to end over REST and the WebSocket.

Resource            crosstalk/resources/chat.resource

Suite Setup         Chat Suite Starts
Suite Teardown      Chat Suite Ends
Test Teardown       Disconnect All

Test Tags           golden-path


*** Test Cases ***
A New User Registers And Logs In
    [Documentation]    The access token verifies against the JWKS and names the new user.
    ${gina} =    Create Test User    gina
    Log In    ${gina}
    Token Should Identify User    ${gina}

Refreshed Tokens Replace The Old Ones
    [Documentation]    The new access token works; the used refresh token cannot be used again.
    ${gina} =    A Logged-In User    gina
    VAR    ${first_tokens} =    ${gina.tokens}
    Refresh Tokens    ${gina}
    Token Should Identify User    ${gina}
    Refresh Should Be Refused    ${first_tokens}

Logging Out Ends The Session On REST And WebSocket
    [Documentation]    Open sockets close with 4401; the old token is refused by REST and new handshakes,
    ...    and the session's refresh token can no longer mint a new one.
    ${gina} =    A Connected User    gina
    Log Out    ${gina}
    Connection Should Be Closed With Code    ${gina}    4401
    Me Should Be Refused    ${gina}
    Backend Should Refuse Token    ${gina}
    Connection Should Be Refused    ${gina}
    Refresh Should Be Refused    ${gina.tokens}    why=the refresh token after logout

One Chat Shows Every Event Kind With The Handoff
    [Documentation]    Triage hands off to the cost specialist, who calls a tool and answers quoting the question.
    ${gina} =    A Connected User    gina
    ${run} =    User Asks    ${gina}    How much will my cloud bill cost next month?
    Agent Should Answer The Question    ${run}
    Run Should Show Every Event Kind    ${run}
    Run Should Hand Off    ${run}    to=cost

A Thread Persists And Is Readable After Reconnecting
    [Documentation]    The conversation is stored, not just streamed: it survives a new connection.
    ${gina} =    A Connected User    gina
    ${run} =    User Asks    ${gina}    Please remember my order number ${gina.canary}
    Agent Should Answer The Question    ${run}
    Reconnect    ${gina}
    Thread Should Hold Message    ${gina}    ${run}
    ${again} =    User Asks    ${gina}    What was my order number?    thread=${run}
    Answer Should Recall    ${again}    ${run.content}
    What Was Streamed Should Be What Was Stored    ${gina}

A Second Message In A Thread Sees The First
    [Documentation]    The agent's tool reads the user's own earlier message in the thread.
    ${gina} =    A Connected User    gina
    ${first} =    User Asks    ${gina}    My budget is 40 euros ${gina.canary}
    Agent Should Answer The Question    ${first}
    ${second} =    User Asks    ${gina}    Can I afford the upgrade?    thread=${first}
    Answer Should Recall    ${second}    ${first.content}
    What Was Streamed Should Be What Was Stored    ${gina}
