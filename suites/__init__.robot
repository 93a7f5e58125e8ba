*** Settings ***
Documentation       Every suite runs against one platform: the configured target (AUTH_URL and
...                 friends, from --variable, a variable file or the environment) or the reference
...                 platform, started once and shared by all robot/pabot processes of the run.

Resource            crosstalk/resources/platform.resource

Suite Setup         Start Or Attach Platform
Suite Teardown      Release Platform
