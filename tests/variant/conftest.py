"""Registers the `variant` marker and prints the variant runs' summaries at the end of the session."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "variant: the suites against the reference platform in variant mode (deselect with -m 'not variant')",
    )


def pytest_terminal_summary(terminalreporter):
    summaries = getattr(terminalreporter.config, "crosstalk_variant_summaries", None)
    if summaries:
        terminalreporter.section("suites against the variant platform")
        for summary in summaries:
            terminalreporter.write_line(summary)
