"""Shared fixtures: a running runtime, stopped after each test."""

from __future__ import annotations

import sys

import pytest
from helpers import FREE_THREADED

from flowcat_ft import Runtime


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
