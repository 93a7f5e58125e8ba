*** Settings ***
Documentation       Tests and a suite that forget to close: the registry's listener closes and reports.
...
...                 What a test opens is closed at the end of that test; what the suite setup opens
...                 (deliberately scoped to the suite) lives until the end of the suite.

Library             CrosstalkAuth
Library             CrosstalkChat
Library             CrosstalkStores
Library             CrosstalkTransactions

Suite Setup         Connect To Redis    suite-scoped    ${REDIS_URL}


*** Test Cases ***
Leave A Socket, A Scratch Database And A Store Open
    [Documentation]    Connects, creates a scratch database, opens a Redis alias, and never closes them.
    ${leaky} =    Create Test User    leaky
    Log In    ${leaky}
    ${socket} =    Connect    ${leaky}
    VAR    ${LEFT_OPEN}    ${socket}    scope=SUITE
    Create Scratch Database    prefix=crosstalk_atest_leak
    Connect To Redis    leak    ${REDIS_URL}

What The Previous Test Left Open Was Closed When It Ended
    [Documentation]    The socket is closed and the test's Redis alias gone; the suite's own alias still works.
    Should Be True    $LEFT_OPEN.closed    The socket the previous test left open is still open
    Run Keyword And Expect Error    No Redis connection with alias 'leak' (open: *): use Connect To Redis first.
    ...    Get Redis Value    leak    any-key
    Redis Key Should Not Exist    suite-scoped    crosstalk-atest-no-such-key
