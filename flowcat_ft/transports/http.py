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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

__all__ = [
    "CREDENTIAL_PARAMS",
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_TARGET_BYTES",
    "Guard",
    "HttpConnection",
    "HttpRequest",
    "HttpResponse",
    "PageHandler",
]

MAX_BODY_BYTES = 64 * 1024
"""The largest request body read: a webhook's form or an SDP offer is a few KB."""

MAX_TARGET_BYTES = 8 * 1024
"""The longest request line (method, path and query): 414 past it."""

MAX_HEAD_BYTES = 16 * 1024
"""The longest request head (request line and headers): 431 past it."""

REFUSAL_LINGER_SECS = 1.0
"""How long a refused connection stays open for its peer to read the answer."""

CREDENTIAL_PARAMS = frozenset({"access_token"})
"""Query parameters that carry credentials (``access_token``, as RFC 6750 names it for
clients that cannot send an ``Authorization`` header, such as a browser's WebSocket): a
guard checks them; they are never a route's options."""


@dataclass(frozen=True)
class HttpRequest:
    """A plain HTTP request: ``query`` holds the URL's parameters, ``body`` the raw body,
    ``target`` the path and query exactly as the client sent them (for signatures);
    ``client`` is the client's address, ``secure`` whether it came over TLS and ``host``
    the host it asked for, each as a trusted proxy says where one is in front
    (:mod:`~flowcat_ft.transports.clients`; ``host`` is the ``Host`` header otherwise)."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes = b""
    target: str = ""
    client: str = ""
    secure: bool = False
    host: str = ""

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
    """A server connection that reads a request's head itself, with limits, and also takes
    ``POST`` requests for pages.

    The head (request line and headers) is read here first: a request line over
    :data:`MAX_TARGET_BYTES` is answered 414, a head over :data:`MAX_HEAD_BYTES` 431, both
    before ``websockets`` sees a byte. A ``POST``'s body is read too, and its head goes on
    to ``websockets`` as a ``GET``; :attr:`method` and :attr:`body` keep what it was. A
    body over :data:`MAX_BODY_BYTES`, sent in chunks or with no ``Content-Length`` leaves
    :attr:`body_error` set to the status to answer with. Runs on the connection's loop.
    """

    method = "GET"
    body = b""
    body_error: HTTPStatus | None = None
    _head: bytearray | None = None  # the request so far, until it goes on to websockets
    _line_end = -1  # where the request line ends in _head, once known
    _head_end = -1  # where the head ends in _head, once known
    _passed = False  # the head went on to websockets: what comes next is theirs
    _refused = False  # answered by refuse(): what comes next is dropped

    def data_received(self, data: bytes) -> None:
        if self._passed:
            super().data_received(data)
            return
        if self._refused:
            return
        if self._head is None:
            self._head = bytearray()
        request = self._head
        start = max(0, len(request) - 3)  # where a line end may begin in the new data
        request += data
        if self._head_end < 0:
            if self._line_end < 0:
                self._line_end = request.find(b"\r\n", start)
            self._head_end = request.find(b"\r\n\r\n", start)
            if not self._head_fits(len(request)) or self._head_end < 0:
                return  # refused, or more of the head to come
        if request.startswith(b"POST "):
            self._post(request, self._head_end)
        else:
            self._pass(bytes(request))

    def _head_fits(self, received: int) -> bool:
        """Whether the head read so far is within the limits; refuses it if not."""
        line_end = self._line_end if self._line_end >= 0 else received
        if line_end > MAX_TARGET_BYTES:
            self.refuse(
                HTTPStatus.REQUEST_URI_TOO_LONG,
                f"the request line is over {MAX_TARGET_BYTES} bytes",
            )
            return False
        head_end = self._head_end + 4 if self._head_end >= 0 else received
        if head_end > MAX_HEAD_BYTES:
            self.refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"the request's head is over {MAX_HEAD_BYTES} bytes",
            )
            return False
        return True

    def _post(self, request: bytearray, end: int) -> None:
        """A POST whose head is in; its body is read once all of it is in."""
        lines = bytes(request[:end]).split(b"\r\n")
        length, error = _body_length(lines)
        if error is not None:
            self.body_error, length = error, 0
        elif len(request) - (end + 4) < length:
            return  # more of the body to come
        self.method, self.body = "POST", bytes(request[end + 4 : end + 4 + length])
        # websockets refuses a GET with a body: its head goes on without the body's headers.
        kept = [line for line in lines[1:] if _header_name(line) not in _BODY_HEADERS]
        self._pass(b"\r\n".join([b"GET " + lines[0][5:], *kept, b"", b""]))

    def _pass(self, head: bytes) -> None:
        self._passed, self._head = True, None
        super().data_received(head)

    def refuse(
        self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer ``status`` with ``message`` (plain text) and close the connection, reading
        nothing more: for what must be refused before (or without) a request."""
        self._refused, self._head = True, None
        body = (message.rstrip("\n") + "\n").encode()
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Date: {formatdate(usegmt=True)}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        transport = self.transport
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        # Closing now would reset the connection (a reset loses the answer) if the peer's
        # request is still coming in: end our side, and give the peer a moment to read.
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(REFUSAL_LINGER_SECS, transport.abort)
        else:
            transport.close()

    def eof_received(self) -> bool | None:
        if self._refused:
            return None  # the peer has read its answer: close
        return super().eof_received()


_BODY_HEADERS = (b"content-length", b"transfer-encoding")


def _header_name(line: bytes) -> bytes:
    return line.partition(b":")[0].strip().lower()


def _body_length(lines: list[bytes]) -> tuple[int, HTTPStatus | None]:
    """The length of a request's body by its head's ``lines``, or the status that refuses
    it: a body sent in chunks or of no stated length (411), too large (413), or a
    ``Content-Length`` that is no length (400)."""
    lengths = [
        line.partition(b":")[2].strip()
        for line in lines[1:]
        if _header_name(line) == b"content-length"
    ]
    if any(_header_name(line) == b"transfer-encoding" for line in lines[1:]) or not lengths:
        return 0, HTTPStatus.LENGTH_REQUIRED
    if len(set(lengths)) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
        return 0, HTTPStatus.BAD_REQUEST
    length = int(lengths[0])
    if length > MAX_BODY_BYTES:
        return 0, HTTPStatus.CONTENT_TOO_LARGE
    return length, None
