"""Fixtures of the server's tests."""

from __future__ import annotations

import pytest

from flowcat_ft.server.app import AgentServer


@pytest.fixture
def agent_server():
    """Starts an :class:`AgentServer` from a configuration; each is stopped after the test."""
    started = []

    def start(config) -> AgentServer:
        started.append(server := AgentServer(config).start())
        return server

    yield start
    for server in started:
        server.stop(grace=0)
