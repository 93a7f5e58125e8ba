*** Settings ***
Documentation       A suite whose teardown forgets to close: the registry's listener closes and reports.

Library             CrosstalkAuth
Library             CrosstalkChat
Library             CrosstalkTransactions


*** Test Cases ***
Leave A Socket And A Scratch Database Open
    [Documentation]    Connects and creates a scratch database, and never closes them.
    ${leaky} =    Create Test User    leaky
    Log In    ${leaky}
    Connect    ${leaky}
    Create Scratch Database    prefix=crosstalk_atest_leak
