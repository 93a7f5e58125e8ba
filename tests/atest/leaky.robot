*** Settings ***
Documentation       A suite whose teardown forgets to close: the registry's listener closes and reports.

Library             CrosstalkAuth
Library             CrosstalkChat
Library             CrosstalkStores
Library             CrosstalkTransactions


*** Test Cases ***
Leave A Socket, A Scratch Database And A Store Open
    [Documentation]    Connects, creates a scratch database, opens a Redis alias, and never closes them.
    ${leaky} =    Create Test User    leaky
    Log In    ${leaky}
    Connect    ${leaky}
    Create Scratch Database    prefix=crosstalk_atest_leak
    Connect To Redis    leak    ${REDIS_URL}
