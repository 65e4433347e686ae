"""Fixtures of the services' tests: local stand-ins for the providers."""

from __future__ import annotations

import pytest
from fake_providers import FakeHTTPServer
from helpers import self_signed_certificate


@pytest.fixture
def http():
    """A local HTTP server (plain HTTP/1.1) that tests give routes to."""
    server = FakeHTTPServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1: (certificate file, key file)."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))
