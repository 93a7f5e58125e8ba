"""The one exception base of every Crosstalk library.

Robot shows a :class:`CrosstalkError` as its message alone (``ROBOT_SUPPRESS_NAME``),
so every failure reads as one line saying what is wrong and what to do.  It derives
from ``AssertionError`` so a failed check stays a test failure, not an error.
"""

from __future__ import annotations


class CrosstalkError(AssertionError):
    """Base of every error a Crosstalk library raises on purpose.

    Example:
        | raise CrosstalkError("alice: no agent.done for run r1 within 5 s; arrived: agent.token x3")
    """

    ROBOT_SUPPRESS_NAME = True
