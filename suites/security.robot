*** Settings ***
Documentation       Security of a multi-user chat platform, after the OWASP Web Security Testing Guide and
...                 the OWASP API Security Top 10 (2023): broken object-level authorization (API1), broken
...                 authentication and token revocation (API2), cross-site WebSocket hijacking
...                 (WSTG-CLNT-10), unrestricted resource consumption (API4) and hostile input.
...
...                 Three users, alice, bob and carol, each own a thread holding their secret canary.
...                 Ownership is checked for every ordered pair of them, over REST and over the WebSocket.

Resource            crosstalk/resources/security.resource

Suite Setup         Security Suite Starts
Suite Teardown      Chat Suite Ends

Test Tags           security


*** Test Cases ***
Another User's Thread Is Invisible Over REST
    [Documentation]    API1: read, list messages of, write into and delete another user's thread by id
    ...    (path and body) → 404, no byte of their data, and their thread survives untouched.
    [Tags]    bola    rest
    [Template]    Intruder Cannot Reach Owner's Thread Over REST
    # intruder    owner
    alice    bob
    alice    carol
    bob    alice
    bob    carol
    carol    alice
    carol    bob

Another User's Thread Is Refused In WebSocket Frames
    [Documentation]    API1: a user_message naming another user's thread_id → error thread_not_found, no run.
    [Tags]    bola    websocket
    [Template]    Intruder Cannot Use Owner's Thread Over WebSocket
    # intruder    owner
    alice    bob
    alice    carol
    bob    alice
    bob    carol
    carol    alice
    carol    bob

Missing And Forged Tokens Are Refused
    [Documentation]    API2: no token, an unsigned token or one signed with anything but the platform's key
    ...    is refused with 401 on REST and on the WebSocket handshake.
    [Tags]    authentication    rest    websocket
    [Template]    Forged Token Is Refused On REST And WebSocket
    missing token
    alg none
    alg none capitalized
    alg none upper
    signature stripped
    payload tampered
    wrong signature
    hs256 confusion
    unknown kid

Properly Signed Tokens With Bad Claims Are Refused
    [Documentation]    API2: a token signed with the platform's own key but expired, without exp, or for
    ...    another issuer or audience is refused with 401 on REST and on the WebSocket handshake.
    [Tags]    authentication    rest    websocket    needs:signing-key
    [Template]    Forged Token Is Refused On REST And WebSocket
    expired
    missing exp
    wrong issuer
    wrong audience

Access Token Is Dead After Logout
    [Documentation]    API2: logout revokes the access token at once, on REST, on new handshakes, and on the
    ...    socket already open with it (closed with 4401).
    [Tags]    revocation    rest    websocket
    ${dave}=    A Logged-In User    dave
    Access Token Should Be Dead After Logout    ${dave}

Logout Ends The Whole Session
    [Documentation]    API2 / OWASP session management: logout revokes the refresh-token family of the
    ...    login too, so a refresh token of the ended session mints nothing (401).
    [Tags]    revocation    rest
    ${gail}=    A Logged-In User    gail
    Logout Should End The Whole Session    ${gail}

Reused Refresh Token Revokes The Whole Family
    [Documentation]    API2: a refresh token presented twice is refused and revokes every token of its family.
    [Tags]    revocation    rest
    ${erin}=    A Logged-In User    erin
    Reusing A Refresh Token Should Revoke Its Family    ${erin}

Concurrent Refreshes Of One Token Have One Winner
    [Documentation]    API2 race: a refresh token replayed in parallel must still be single-use.
    [Tags]    revocation    race    rest
    ${fay}=    A Logged-In User    fay
    Concurrent Refreshes Should Have One Winner    ${fay}

Cross-Site WebSocket Hijacking Is Refused
    [Documentation]    WSTG-CLNT-10: a page on another site must not open a socket with the user's
    ...    credentials: a foreign Origin, a look-alike and Origin null are refused with 403.
    [Tags]    cswsh    websocket
    [Template]    Foreign Origin Is Refused
    https://evil.example
    http://localhost.evil.example
    null

An Oversized Frame Is Refused Without Harming Others
    [Documentation]    API4: a frame over the size limit is refused; bob's and carol's runs complete meanwhile
    ...    and alice's socket stays usable.
    [Tags]    resource-limits    websocket    needs:limits
    ${others}=    Others Start Chatting    bob    carol
    Oversized Frame Should Be Refused    alice
    Their Runs Should Complete Within    ${others}    ${OTHER_USERS_LATENCY_LIMIT}
    Socket Should Stay Usable    alice

A Message Flood Is Throttled Without Slowing Others
    [Documentation]    API4: one user flooding the socket is rate limited; the others' runs stay fast.
    [Tags]    resource-limits    websocket    needs:limits
    ${mallory}=    A Connected User    mallory
    ${others}=    Others Start Chatting    bob    carol
    User Floods The Socket    ${mallory}
    Flood Should Be Throttled    ${mallory}
    Their Runs Should Complete Within    ${others}    ${OTHER_USERS_LATENCY_LIMIT}

Hostile Content Is Stored And Returned Verbatim
    [Documentation]    SQL, HTML and control characters are data: stored and answered byte for byte, never
    ...    executed, and another user's stream carries on.
    [Tags]    input    websocket    rest
    [Template]    Hostile Content Should Round-Trip Verbatim
    '; DROP TABLE messages; --
    <script>alert(1)</script><img src=x onerror=alert(2)>
    tab\there, bell\x07, escape\x1b[31m, line\nbreak, quote " and backslash \\

Hostile Input Gets A Clear Refusal And Harms No One
    [Documentation]    API4/API8: oversized, deeply nested, wrongly typed, invalid UTF-8, NUL and lone-surrogate
    ...    input on every write endpoint and the socket gets a 4xx or an error frame, never a 5xx, with no
    ...    internals in any body; the platform stays healthy and bob's chat is unaffected.
    [Tags]    hostile-input    rest    websocket
    ${others}=    Others Start Chatting    bob
    Hostile Input Is Thrown At Every Write Endpoint And The Socket    alice
    Both Services Should Stay Healthy
    Their Runs Should Complete Within    ${others}    ${OTHER_USERS_LATENCY_LIMIT}
    ${after}=    Others Start Chatting    bob
    Their Runs Should Complete Within    ${after}    ${OTHER_USERS_LATENCY_LIMIT}
    Thread Should Be Untouched By    bob    alice

Closed Connections Leave No Session Behind
    [Documentation]    Session records in Redis live exactly as long as their socket.
    [Tags]    sessions    websocket    needs:redis
    ${frank}=    A Logged-In User    frank
    Sockets Opened And Closed    ${frank}    ${SOCKETS_PER_LEAK_CHECK}
    No Session Should Remain    ${frank}    timeout=${CLEANUP_TIMEOUT}

Closed Connections Free Their Server Resources
    [Documentation]    The server forgets a connection when its socket closes (/metrics tracked_connections).
    [Tags]    sessions    websocket    needs:metrics
    ${grace}=    A Logged-In User    grace
    ${before}=    Get Leaked Connection Count    ${BACKEND_URL}
    Sockets Opened And Closed    ${grace}    ${SOCKETS_PER_LEAK_CHECK}
    Closed Sockets Should Be Released By The Server    ${before}    ${SOCKETS_PER_LEAK_CHECK}
    ...    timeout=${CLEANUP_TIMEOUT}
