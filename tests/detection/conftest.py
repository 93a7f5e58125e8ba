"""Registers the `detection` marker and prints the detection matrix at the end of the run."""

from __future__ import annotations

from pathlib import Path

MATRIX_FILE = Path(__file__).resolve().parents[2] / "results" / "detection" / "matrix.md"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "detection: the detection matrix (starts the reference platform once per fault switch; "
        "deselect with -m 'not detection')",
    )


def pytest_terminal_summary(terminalreporter):
    # set by the matrix fixture only when it ran in this session, so a stale
    # matrix.md from an earlier run is never shown as this run's
    table = getattr(terminalreporter.config, "crosstalk_detection_matrix", None)
    if table:
        terminalreporter.section("detection matrix")
        terminalreporter.write_line(table)
        terminalreporter.write_line(f"(also written to {MATRIX_FILE})")
