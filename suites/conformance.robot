*** Settings ***
Documentation       Conformance: does this platform meet the Crosstalk contract?  Run it first
...                 (robot --include conformance suites/) to learn which rules your platform meets
...                 and which optional capabilities it offers before you run the rest.
...
...                 Every rule is checked over real HTTP and WebSocket connections; every JSON answer
...                 is validated against docs/contract/openapi.yaml and every frame against
...                 docs/contract/asyncapi.yaml.  The log holds one table per area.

Resource            crosstalk/resources/contract.resource

Suite Setup         Start Or Attach Platform
Suite Teardown      Release Platform

Test Tags           conformance


*** Test Cases ***
The Auth Service Meets The Contract
    [Documentation]    Register, log in, refresh, me, JWKS and logout answer as specified.
    Sign-Up, Sign-In And Tokens Should Follow The Contract

The Backend REST API Meets The Contract
    [Documentation]    Health, token checks, threads, uniform 404s, notes and workspaces answer as specified.
    Threads, Notes And Workspaces Should Follow The Contract

The Agent Stream Meets The Contract
    [Documentation]    Handshake refusals, the event grammar of a run and error frames, all schema-valid.
    The Agent Stream Should Follow The Contract

The Platform's Optional Capabilities Are Known
    [Documentation]    Lists every optional capability and what would enable the absent ones.
    The Platform's Optional Capabilities Are Listed
