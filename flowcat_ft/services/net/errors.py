"""Errors a provider's messages can raise, whatever the protocol."""

from __future__ import annotations

__all__ = ["ProviderError", "ProviderProtocolError"]


class ProviderProtocolError(Exception):
    """The provider broke its protocol: a message that is not JSON, of the wrong shape, or
    a stream cut short."""


class ProviderError(Exception):
    """The provider reported an error in one of its messages (rate limit, bad request,
    overload...)."""
