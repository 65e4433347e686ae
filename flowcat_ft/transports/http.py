"""Plain HTTP beside the media streams, on the same port: pages, webhooks, JSON endpoints.

The ``websockets`` library answers plain HTTP requests through its ``process_request``
hook, but its parser knows only ``GET`` (a WebSocket handshake is always a GET), and
carriers post their webhooks. :class:`HttpConnection` reads a ``POST``'s body itself and
hands the library the same request as a ``GET``; the page handler sees the method and
the body in its :class:`HttpRequest`.

A page handler takes an :class:`HttpRequest` and returns an :class:`HttpResponse` (or a
coroutine that does); it runs on the connection's event loop, so it must not block.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

__all__ = [
    "CREDENTIAL_PARAMS",
    "MAX_BODY_BYTES",
    "Guard",
    "HttpConnection",
    "HttpRequest",
    "HttpResponse",
    "PageHandler",
]

MAX_BODY_BYTES = 64 * 1024
"""The largest request body read: a webhook's form or an SDP offer is a few KB."""

CREDENTIAL_PARAMS = frozenset({"access_token"})
"""Query parameters that carry credentials (``access_token``, as RFC 6750 names it for
clients that cannot send an ``Authorization`` header, such as a browser's WebSocket): a
guard checks them; they are never a route's options."""


@dataclass(frozen=True)
class HttpRequest:
    """A plain HTTP request: ``query`` holds the URL's parameters, ``body`` the raw body,
    ``target`` the path and query exactly as the client sent them (for signatures),
    ``remote`` the IP address of the peer that sent it (a proxy's, behind one)."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes = b""
    target: str = ""
    remote: str = ""

    def form(self) -> dict[str, str]:
        """A form post's fields (``application/x-www-form-urlencoded``), or the query's
        for a GET: carriers send their webhooks either way."""
        if self.method == "GET":
            return dict(self.query)
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))

    def json(self) -> Any:
        """The body as JSON; raises ``ValueError`` if it is not."""
        return json.loads(self.body)


@dataclass
class HttpResponse:
    """What a page handler answers."""

    status: int = HTTPStatus.OK
    body: str | bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = HTTPStatus.OK) -> HttpResponse:
        return cls(status, json.dumps(value, separators=(",", ":")), "application/json")

    @classmethod
    def error(cls, status: int, message: str) -> HttpResponse:
        return cls(status, message.rstrip("\n") + "\n")


type PageHandler = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]

type Guard = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse | None] | None]
"""Checks a request before its page or WebSocket handshake: None lets it through, a
response refuses it (a 403 for a bad signature, say). It runs on the connection's event
loop: a check that costs CPU time returns a coroutine that does that work elsewhere."""


class HttpConnection(ServerConnection):
    """A server connection that also takes ``POST`` requests for pages.

    The request's head and body are read here; the head goes on to ``websockets`` as a
    ``GET`` and :attr:`method` and :attr:`body` keep what it was. A body over
    :data:`MAX_BODY_BYTES`, or sent in chunks (no ``Content-Length``), leaves
    :attr:`body_error` set to the status to answer with. Runs on the connection's loop.
    """

    method = "GET"
    body = b""
    body_error: HTTPStatus | None = None
    _pending: bytearray | None = None  # a POST being read: head and body so far

    def data_received(self, data: bytes) -> None:
        if self._pending is None and self.request is None and data[:5] == b"POST ":
            self._pending = bytearray()
        if self._pending is None:
            super().data_received(data)
            return
        pending = self._pending
        pending += data
        end = pending.find(b"\r\n\r\n")
        if end < 0:
            if len(pending) > MAX_BODY_BYTES:  # a head this long is not a webhook
                self._pending = None
                self.transport.abort()
            return
        head = bytes(pending[: end + 4])
        lines = head[:end].split(b"\r\n")
        length = _content_length(lines)
        if length is None or length > MAX_BODY_BYTES:
            self.body_error = (
                HTTPStatus.LENGTH_REQUIRED if length is None else HTTPStatus.CONTENT_TOO_LARGE
            )
            length = 0
        elif len(pending) - len(head) < length:
            return  # more of the body to come
        self._pending = None
        self.method, self.body = "POST", bytes(pending[len(head) : len(head) + length])
        # websockets refuses a GET with a body: its head goes on without the body's headers.
        kept = [line for line in lines[1:] if _header_name(line) not in _BODY_HEADERS]
        super().data_received(b"\r\n".join([b"GET " + lines[0][5:], *kept, b"", b""]))


_BODY_HEADERS = (b"content-length", b"transfer-encoding")


def _header_name(line: bytes) -> bytes:
    return line.partition(b":")[0].strip().lower()


def _content_length(lines: list[bytes]) -> int | None:
    """The ``Content-Length`` in a request head's lines; None if absent (or chunked)."""
    for line in lines[1:]:
        if _header_name(line) == b"content-length":
            try:
                return int(line.partition(b":")[2].strip())
            except ValueError:
                return None
    return None
