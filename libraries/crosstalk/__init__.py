"""Crosstalk: the engine behind the Crosstalk* keyword libraries, and the ``crosstalk`` command."""

__version__ = "0.1.0"
