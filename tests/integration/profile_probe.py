"""Robot pre-run modifier: every suite keeps its real setup and teardown, its tests become one no-op.

``robot --prerunmodifier tests.integration.profile_probe.SuiteSetupsOnly --variablefile X suites/``
runs each suite's setup (where a profile variable that collides with a suite's own
variable shows: "Argument 'dictionary' got value '100'") with the variable file
applied, at the cost of the setups only.
"""

from __future__ import annotations

from robot.api import SuiteVisitor

PROBE_TEST = "Suite Setup Accepts The Profile"


class SuiteSetupsOnly(SuiteVisitor):
    """Replace the tests of every suite that has any by one test that does nothing."""

    def start_suite(self, suite) -> None:  # type: ignore[no-untyped-def]
        if suite.tests:
            suite.tests.clear()
            probe = suite.tests.create(name=PROBE_TEST, tags=["profile-probe"])
            probe.body.create_keyword("No Operation")

    def visit_test(self, test) -> None:  # type: ignore[no-untyped-def]
        pass
