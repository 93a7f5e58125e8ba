*** Settings ***
Documentation       Acceptance tests of the Crosstalk libraries themselves (run by test_atest.py).
...                 The platform is the pytest session's reference platform (REFERENCE_STATE).

Library             CrosstalkPlatform

Suite Setup         Start Or Attach Platform
Suite Teardown      Release Platform
