*** Settings ***
Documentation       Smoke: two users log in and each completes one chat.

Resource            crosstalk/resources/chat.resource

Suite Setup         Chat Suite Starts
Suite Teardown      Chat Suite Ends
Test Teardown       Disconnect All

Test Tags           smoke


*** Test Cases ***
Two Users Each Get An Answer To Their Own Question
    [Documentation]    Both users chat at the same time; each answer quotes that user's own message.
    ${alice} =    A Connected User    alice
    ${bob} =    A Connected User    bob
    ${alice_run} =    User Asks    ${alice}    What does my plan cost? ${alice.canary}
    ${bob_run} =    User Asks    ${bob}    Is my password storage secure? ${bob.canary}
    Agent Should Answer The Question    ${alice_run}
    Agent Should Answer The Question    ${bob_run}
