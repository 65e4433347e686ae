"""Shared fixtures: a running runtime that is stopped, and checked for leaked slabs, after
each test."""

from __future__ import annotations

import sys

import pytest

from flowcat_ft import Runtime

FREE_THREADED = not sys._is_gil_enabled()


def pytest_report_header() -> str:
    build = "free-threaded" if FREE_THREADED else "GIL"
    return f"flowcat-ft tests on {sys.version.split()[0]} ({build} build)"


@pytest.fixture
def runtime():
    rt = Runtime(threads=2, slabs=512).start()
    try:
        yield rt
    finally:
        rt.stop()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (for state other threads change)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()
