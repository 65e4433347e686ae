"""Shared fixtures: a running runtime, and real servers on loopback, stopped after each test."""

from __future__ import annotations

import sys

import pytest
from helpers import FREE_THREADED

from flowcat_ft import Runtime
from flowcat_ft.agents.echo import echo_pipeline
from flowcat_ft.transports.server import WebSocketServer
from flowcat_ft.transports.session import MediaOptions


def pytest_report_header() -> str:
    build = "free-threaded" if FREE_THREADED else "GIL"
    return f"flowcat-ft tests on {sys.version.split()[0]} ({build} build)"


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxies_from_this_machine(monkeypatch):
    """Requests to the local fake providers go straight to them, whatever proxy this
    machine's environment names (the proxy tests set their own)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def runtime():
    rt = Runtime(threads=2, slabs=512).start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
def serve():
    """Start servers on free ports: ``serve(pipeline=..., **server_options)``."""
    started: list[tuple[Runtime, WebSocketServer]] = []

    def start(
        pipeline=None, *, slabs: int = 2048, options: MediaOptions | None = None, **kwargs
    ) -> WebSocketServer:
        runtime = Runtime(threads=2, slabs=slabs)
        server = WebSocketServer(
            runtime,
            pipeline or echo_pipeline(),
            port=0,
            loops=2,
            options=options or MediaOptions(),
            **kwargs,
        )
        started.append((runtime, server.start()))
        return server

    yield start
    for runtime, server in started:
        server.stop(grace=1)
        runtime.stop()
