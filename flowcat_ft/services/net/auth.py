"""API keys: read from the environment, never written to a log.

A key is held in a :class:`Secret`, whose ``repr`` and ``str`` show only ``'***'``; its
value is read with :meth:`Secret.reveal` where a request is built, and nowhere else.
Headers that carry credentials (``Authorization``, ``x-api-key``, ``xi-api-key``...) are
redacted by :func:`redact_headers` wherever headers are shown. The loggers this package
writes to (and the one it hands the ``websockets`` library, which logs handshake headers
and frames at DEBUG level) carry :class:`RedactingFilter`, which scrubs the value of every
:class:`Secret` made in this process out of each record before it is emitted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping

__all__ = [
    "SENSITIVE_HEADERS",
    "MissingAPIKeyError",
    "RedactingFilter",
    "Secret",
    "api_key",
    "get_logger",
    "optional_api_key",
    "redact",
    "redact_headers",
]

SENSITIVE_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "xi-api-key",
        "api-key",
        "openai-api-key",
        "cookie",
        "set-cookie",
    }
)
"""Header names (lower case) whose values are credentials."""

REDACTED = "***"

_secrets_lock = threading.Lock()
_secrets: set[str] = set()


class MissingAPIKeyError(RuntimeError):
    """No API key was given and the environment variable that should hold one is unset."""


class Secret:
    """A credential: its value never appears in ``repr``, ``str`` or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret must be a non-empty string")
        self._value = value
        if len(value) >= 4:  # shorter strings would scrub ordinary words from log lines
            with _secrets_lock:
                _secrets.add(value)

    def reveal(self) -> str:
        """The value, for building a request (never for logging)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{REDACTED}')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> object:
        raise TypeError("a Secret cannot be pickled")


def api_key(env_var: str, value: str | Secret | None = None) -> Secret:
    """The key given, else the one in ``env_var``; :class:`MissingAPIKeyError` if neither."""
    if isinstance(value, Secret):
        return value
    if value:
        return Secret(value)
    found = os.environ.get(env_var)
    if not found:
        raise MissingAPIKeyError(f"no API key: pass one, or set the {env_var} variable")
    return Secret(found)


def optional_api_key(env_var: str | None, value: str | Secret | None = None) -> Secret | None:
    """Like :func:`api_key`, for providers that may need no key (a local server): None
    when no key is given and ``env_var`` is None."""
    if value is None and env_var is None:
        return None
    return api_key(env_var or "", value)


def redact(text: str) -> str:
    """``text`` with the value of every :class:`Secret` made so far replaced by ``***``."""
    with _secrets_lock:
        secrets = list(_secrets)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Headers as ``(name, value)`` pairs, with credential values replaced by ``***``."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [
        (name, REDACTED if name.lower() in SENSITIVE_HEADERS else redact(str(value)))
        for name, value in items
    ]


class RedactingFilter(logging.Filter):
    """Scrubs secrets out of a log record (its message with the arguments merged in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler to report
            return True
        args = record.args
        if (  # websockets logs "> %s: %s" for each header of a handshake
            isinstance(args, tuple)
            and len(args) == 2
            and isinstance(args[0], str)
            and args[0].lower() in SENSITIVE_HEADERS
        ):
            with contextlib.suppress(TypeError, ValueError):
                message = str(record.msg) % (args[0], REDACTED)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with :class:`RedactingFilter` attached (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
