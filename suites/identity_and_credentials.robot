*** Settings ***
Documentation       Who a request acts for comes from the verified token only, and only from the one
...                 place the contract names (OWASP API1/API2/API3 2023, WSTG-ATHN-04 and WSTG-IDNT-04).
...
...                 A request body or a WebSocket frame naming another user (``user_id``, ``owner``,
...                 ``sub`` …) must change nothing; a token in the URL, a cookie, a subprotocol or a
...                 second Authorization header must never authenticate; login must not tell which
...                 emails exist, by its answer or by its timing.

Resource            crosstalk/resources/integrity.resource

Suite Setup         Chat Suite Starts
Suite Teardown      Chat Suite Ends
Test Teardown       Disconnect All

Test Tags           security    identity-and-credentials    rest


*** Test Cases ***
Identity Fields In Chat Frames Are Ignored
    [Documentation]    API3 mass assignment over the WebSocket: alice's frames carrying bob's user_id, owner,
    ...    sub … store for alice only (events, REST, rows); into bob's thread they are refused.
    [Tags]    identity    websocket
    ${alice}    ${bob} =    Two Users    alice    bob
    Identity Fields In Frames Should Have No Effect    ${alice}    ${bob}

Identity Fields In Request Bodies Are Ignored
    [Documentation]    API3 mass assignment over REST: notes, workspaces, login, refresh and registration with
    ...    bob's ids in the body act for the token's (or credentials') user only.
    [Tags]    identity
    ${alice}    ${bob} =    Two Users    alice    bob
    Identity Fields In Bodies Should Have No Effect    ${alice}    ${bob}

Only The Authorization Header Carries Credentials
    [Documentation]    API2: a valid token in the query string, a cookie, Sec-WebSocket-Protocol, a custom
    ...    header or beside a second Authorization header is refused on REST and on the handshake.
    [Tags]    credentials    websocket
    ${alice} =    A Logged-In User    alice
    Only The Authorization Header Should Carry Credentials    ${alice}

Forged And Revoked Tokens Fail In Every Channel
    [Documentation]    API2: unsigned, wrongly signed and revoked tokens are refused in every channel, any case
    ...    of the Bearer scheme included.
    [Tags]    credentials    websocket
    ${alice} =    A Logged-In User    alice
    ${unsigned} =    Forge Token    ${alice}    alg_none
    ${wrong_key} =    Forge Token    ${alice}    wrong_signature
    ${revoked} =    A Revoked Token
    Bad Tokens Should Fail In Every Channel    unsigned=${unsigned}    wrong_key=${wrong_key}    revoked=${revoked}

Expired Tokens Fail In Every Channel
    [Documentation]    API2: a token signed with the platform's own key but expired is refused everywhere.
    [Tags]    credentials    websocket    needs:signing-key
    ${alice} =    A Logged-In User    alice
    ${expired} =    Forge Token    ${alice}    expired
    Bad Tokens Should Fail In Every Channel    expired=${expired}

Login Does Not Tell Which Emails Exist
    [Documentation]    WSTG-IDNT-04: unknown email and wrong password get byte-identical answers, and their
    ...    timings (${LOGIN_TIMING_TRIES} each, interleaved) do not differ by a Mann-Whitney U test at
    ...    alpha ${LOGIN_TIMING_ALPHA} with a gap over ${LOGIN_TIMING_MIN_GAP}.
    [Tags]    enumeration
    ${alice} =    A Logged-In User    alice
    Login Should Not Reveal Which Emails Exist    ${alice}    tries=${LOGIN_TIMING_TRIES}
    ...    alpha=${LOGIN_TIMING_ALPHA}    min_difference=${LOGIN_TIMING_MIN_GAP}
