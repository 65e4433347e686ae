"""Helpers shared by the tests."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

FREE_THREADED = not sys._is_gil_enabled()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (for state other threads change)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()
