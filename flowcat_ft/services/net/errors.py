"""Errors a provider's messages can raise, whatever the protocol, and the one reading of a
message that every JSON protocol shares."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ProviderError", "ProviderProtocolError", "json_object"]


class ProviderProtocolError(Exception):
    """The provider broke its protocol: a message that is not JSON, of the wrong shape, or
    a stream cut short."""


class ProviderError(Exception):
    """The provider reported an error in one of its messages (rate limit, bad request,
    overload...)."""


def json_object(
    message: str | bytes,
    what: str = "a message",
    error: type[ProviderProtocolError] = ProviderProtocolError,
) -> dict[str, Any]:
    """*message* (*what* it is, for the error), a JSON object; *error* if it is binary, not
    JSON or not an object, quoting its start."""
    if isinstance(message, bytes):
        raise error(f"a {len(message)}-byte binary message (expected JSON)")
    try:
        payload = json.loads(message)
    except ValueError:
        raise error(f"{what} that is not JSON: {message[:80]!r}") from None
    if not isinstance(payload, dict):
        raise error(f"{what} that is not an object: {message[:80]!r}")
    return payload
