"""A small HTTP/1.1 client for providers' REST and streaming APIs, over asyncio streams.

Two layers, as in the ``websockets`` library:

- **Sans-I/O**: :func:`build_request` turns a request into bytes; :class:`ResponseParser`
  turns the bytes of a response, fed in as they arrive, into events: a
  :class:`ResponseHead` (status, reason, headers), :class:`BodyChunk`\\ s and one
  :class:`EndOfMessage`. It decodes ``Transfer-Encoding: chunked`` (RFC 9112 §7.1), honours
  ``Content-Length``, and otherwise reads the body until the connection closes; it refuses
  malformed input with :class:`HTTPProtocolError`. Tested without sockets.
- **I/O**: :class:`HTTPClient` sends requests over ``asyncio.open_connection`` (TLS through
  :mod:`ssl` for ``https``), keeps idle connections for reuse, and hands back a
  :class:`Response` whose body streams with :meth:`Response.aiter_bytes`. Timeouts bound
  connecting (TLS included), waiting for the response head, and every wait for more of the
  body (a provider that stalls mid-stream raises :class:`HTTPTimeoutError`). A status of
  400 or more raises :class:`HTTPStatusError` carrying the status, the headers and the
  start of the body. :meth:`HTTPClient.request` retries connect errors, 429 and 5xx per a
  :class:`~flowcat_ft.services.net.retry.RetryPolicy`.

Credentials in headers never reach a log line or a ``repr``
(:func:`~flowcat_ft.services.net.auth.redact_headers`).

Threading: a client and its connections belong to one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flowcat_ft.services.net.auth import Secret, get_logger, redact, redact_headers
from flowcat_ft.services.net.retry import RetryPolicy, parse_retry_after, retrying

__all__ = [
    "BodyChunk",
    "EndOfMessage",
    "HTTPClient",
    "HTTPConnectError",
    "HTTPError",
    "HTTPProtocolError",
    "HTTPStatusError",
    "HTTPTimeoutError",
    "Headers",
    "Response",
    "ResponseHead",
    "ResponseParser",
    "Timeouts",
    "build_request",
]

logger = get_logger("flowcat_ft.services.net")

MAX_HEAD_BYTES = 64 * 1024
MAX_ERROR_BODY = 2048
"""How much of an error response's body is read and kept (the rest is not read)."""
ERROR_BODY_SHOWN = 300
"""How much of it an :class:`HTTPStatusError`'s message quotes."""


# -- errors -------------------------------------------------------------------------------


class HTTPError(Exception):
    """Base of this client's errors."""


class HTTPConnectError(HTTPError, ConnectionError):
    """The connection could not be made (refused, reset, name or TLS failure)."""


class HTTPTimeoutError(HTTPError, TimeoutError):
    """Connecting, or waiting for the response or the next part of its body, took too long."""


class HTTPProtocolError(HTTPError):
    """The server broke HTTP/1.1: garbage instead of a status line, a bad chunk size, a
    connection closed before the body it announced was complete."""


class _StaleConnection(Exception):
    """A reused idle connection turned out to be closed before any response arrived."""


class HTTPStatusError(HTTPError):
    """The server answered with an error status (400 or more).

    ``body`` is the start of the response body (at most ``MAX_ERROR_BODY`` bytes, decoded
    leniently); ``retry_after`` is the wait a ``Retry-After`` header asked for, in seconds.
    """

    def __init__(self, status: int, reason: str, headers: Headers, body: str, url: str) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.url = url
        self.retry_after = parse_retry_after(headers.get("retry-after"))
        shown = body[:ERROR_BODY_SHOWN] + ("…" if len(body) > ERROR_BODY_SHOWN else "")
        super().__init__(redact(f"HTTP {status} {reason} from {url}: {shown}".rstrip(": ")))


# -- the Sans-I/O part --------------------------------------------------------------------


class Headers:
    """Response headers: ``(name, value)`` pairs in order, looked up without regard to case."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        name = name.lower()
        for key, value in self._items:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._items if key.lower() == name]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"Headers({redact_headers(self._items)!r})"


def build_request(
    method: str,
    target: str,
    host: str,
    headers: Mapping[str, str | Secret] | None = None,
    body: bytes | None = None,
) -> bytes:
    """The bytes of one HTTP/1.1 request (head and body). ``Host``, ``Content-Length`` and
    ``Connection: keep-alive`` are added unless given; header values may be
    :class:`~flowcat_ft.services.net.auth.Secret`\\ s."""
    lines = [f"{method} {target} HTTP/1.1"]
    given = {k.lower() for k in headers or ()}
    if "host" not in given:
        lines.append(f"Host: {host}")
    for name, value in (headers or {}).items():
        text = value.reveal() if isinstance(value, Secret) else str(value)
        if any(c in text for c in "\r\n\0") or any(c in name for c in "\r\n\0: "):
            raise ValueError(f"header {name!r} has a character HTTP does not allow")
        lines.append(f"{name}: {text}")
    if body is not None and "content-length" not in given:
        lines.append(f"Content-Length: {len(body)}")
    elif body is None and method in ("POST", "PUT", "PATCH") and "content-length" not in given:
        lines.append("Content-Length: 0")
    if "connection" not in given:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: Headers
    version: str = "HTTP/1.1"


@dataclass(frozen=True, slots=True, repr=False)
class BodyChunk:
    data: bytes

    def __repr__(self) -> str:
        return f"BodyChunk(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The body is complete. ``keep_alive``: the connection may carry another request."""

    keep_alive: bool = True


type ResponseEvent = ResponseHead | BodyChunk | EndOfMessage

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """One response's bytes in, events out (see the module docstring).

    ``head_request``: the request was HEAD, so the response has no body whatever its
    headers say. Informational responses (1xx) are skipped.
    """

    def __init__(self, *, head_request: bool = False, max_head: int = MAX_HEAD_BYTES) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._keep_alive = True
        self._head_request = head_request
        self.max_head = max_head
        self.head: ResponseHead | None = None

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """The events the bytes received so far complete."""
        if self._state == _DONE:
            if data:
                self._keep_alive = False  # bytes after the end: do not reuse this connection
            return []
        self._buf += data
        events: list[ResponseEvent] = []
        while self._step(events):
            pass
        return events

    def eof(self) -> list[ResponseEvent]:
        """The connection closed: the end of a read-until-close body, or an error."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            events: list[ResponseEvent] = []
            if self._buf:
                events.append(BodyChunk(bytes(self._buf)))
                self._buf.clear()
            events.append(EndOfMessage(keep_alive=False))
            return events
        if self._state == _DONE:
            return []
        where = "before the response head" if self._state == _HEAD else "mid-body"
        raise HTTPProtocolError(f"the server closed the connection {where}")

    # -- states --------------------------------------------------------------------------

    def _step(self, events: list[ResponseEvent]) -> bool:
        state = self._state
        buf = self._buf
        if state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_head:
                    raise HTTPProtocolError(f"a response head over {self.max_head} bytes")
                if not b"HTTP/".startswith(bytes(buf[:5])):
                    raise HTTPProtocolError(f"not an HTTP response: {bytes(buf[:40])!r}")
                return False
            head = bytes(buf[:end])
            del buf[: end + 4]
            return self._on_head(head, events)
        if state == _LENGTH:
            if not buf:
                return False
            if self._body_chunk(events):
                self._finish(events)
            return bool(buf) and self._state != _DONE
        if state == _CHUNK_SIZE:
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 1024:
                    raise HTTPProtocolError("a chunk-size line over 1024 bytes")
                return False
            line = bytes(buf[:end]).split(b";", 1)[0].strip()
            del buf[: end + 2]
            try:
                size = int(line, 16)
            except ValueError:
                raise HTTPProtocolError(f"a bad chunk size: {line[:40]!r}") from None
            if size < 0 or not line or not all(c in b"0123456789abcdefABCDEF" for c in line):
                raise HTTPProtocolError(f"a bad chunk size: {line[:40]!r}")
            if size == 0:
                self._state = _TRAILERS
            else:
                self._remaining = size
                self._state = _CHUNK_DATA
            return True
        if state == _CHUNK_DATA:
            if not buf:
                return False
            if self._body_chunk(events):
                self._state = _CHUNK_CRLF
            return bool(buf)
        if state == _CHUNK_CRLF:
            if len(buf) < 2:
                return False
            if buf[:2] != b"\r\n":
                raise HTTPProtocolError("a chunk not followed by CRLF")
            del buf[:2]
            self._state = _CHUNK_SIZE
            return True
        if state == _TRAILERS:
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > self.max_head:
                    raise HTTPProtocolError("trailers too long")
                return False
            line = bytes(buf[:end])
            del buf[: end + 2]
            if not line:  # the blank line after the (ignored) trailer fields
                self._finish(events)
            return self._state != _DONE
        if state == _UNTIL_CLOSE:
            if buf:
                events.append(BodyChunk(bytes(buf)))
                buf.clear()
            return False
        return False

    def _on_head(self, head: bytes, events: list[ResponseEvent]) -> bool:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes anything)
            raise HTTPProtocolError("an undecodable response head") from None
        status_line, *header_lines = text.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HTTPProtocolError(f"a bad status line: {status_line[:60]!r}")
        status = int(parts[1])
        if not 100 <= status <= 599:
            raise HTTPProtocolError(f"a bad status code: {status}")
        reason = parts[2] if len(parts) > 2 else ""
        items = []
        for line in header_lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise HTTPProtocolError(f"a bad header line: {line[:60]!r}")
            items.append((name, value.strip()))
        headers = Headers(items)
        if 100 <= status < 200:
            return True  # informational: the real response follows
        version = parts[0]
        connection = (headers.get("connection") or "").lower()
        self._keep_alive = version == "HTTP/1.1" and "close" not in connection
        self.head = ResponseHead(status, reason, headers, version)
        events.append(self.head)
        transfer = (headers.get("transfer-encoding") or "").lower()
        length = headers.get("content-length")
        if self._head_request or status in (204, 304):
            self._finish(events)
        elif transfer:
            if transfer.rsplit(",", 1)[-1].strip() != "chunked":
                raise HTTPProtocolError(f"an unsupported transfer encoding: {transfer!r}")
            self._state = _CHUNK_SIZE
        elif length is not None:
            lengths = {v.strip() for v in headers.get_all("content-length")}
            if len(lengths) != 1 or not length.strip().isdigit():
                raise HTTPProtocolError(f"a bad Content-Length: {length!r}")
            self._remaining = int(length)
            self._state = _LENGTH
            if self._remaining == 0:
                self._finish(events)
        else:
            self._keep_alive = False
            self._state = _UNTIL_CLOSE
        return self._state != _DONE

    def _body_chunk(self, events: list[ResponseEvent]) -> bool:
        """Pass on as much of the body part being read as has arrived; True once all of
        it has."""
        buf = self._buf
        take = min(len(buf), self._remaining)
        events.append(BodyChunk(bytes(buf[:take])))
        del buf[:take]
        self._remaining -= take
        return self._remaining == 0

    def _finish(self, events: list[ResponseEvent]) -> None:
        self._state = _DONE
        if self._buf:
            self._keep_alive = False
        events.append(EndOfMessage(keep_alive=self._keep_alive))


# -- the I/O part -------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for connecting (TLS included), for the response head once the
    request is sent, and for each wait for more of the body (a stall)."""

    connect: float = 5.0
    head: float = 15.0
    read: float = 15.0


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    origin: tuple[str, str, int]

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


@dataclass
class _Origin:
    scheme: str
    host: str
    port: int
    target: str

    @classmethod
    def of(cls, url: str) -> _Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, target)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(repr=False)
class Response:
    """A response whose head has arrived; the body streams on demand.

    Read the body with :meth:`aiter_bytes` (or :meth:`read`, :meth:`json`); close it with
    :meth:`aclose` (or ``async with``), which, if the body was not read to its end, closes
    the connection: the server sees the client go away, as a cancelled LLM stream must.
    """

    status: int
    reason: str
    headers: Headers
    url: str
    _conn: _Connection | None = field(default=None)
    _parser: ResponseParser | None = field(default=None)
    _client: HTTPClient | None = field(default=None)
    _pending: deque = field(default_factory=deque)
    _read_timeout: float = 15.0
    _done: bool = False

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} from {redact(self.url)}>"

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked framing removed)."""
        try:
            while not self._done:
                while self._pending:
                    event = self._pending.popleft()
                    if isinstance(event, BodyChunk):
                        if event.data:
                            yield event.data
                    elif isinstance(event, EndOfMessage):
                        self._release(event.keep_alive)
                        return
                await self._receive()
        except BaseException:
            await self.aclose()
            raise

    async def _receive(self) -> None:
        conn, parser = self._conn, self._parser
        if conn is None or parser is None:
            raise HTTPProtocolError("the response is closed")
        try:
            data = await asyncio.wait_for(conn.reader.read(65536), self._read_timeout)
        except TimeoutError:
            raise HTTPTimeoutError(
                f"no data from {redact(self.url)} for {self._read_timeout:g} s"
            ) from None
        except (ConnectionError, OSError) as error:
            raise HTTPProtocolError(f"the connection failed mid-body: {error}") from None
        self._pending.extend(parser.feed(data) if data else parser.eof())

    async def finish(self, timeout: float = 0.5) -> None:
        """Read what is left of the body (a stream's last bytes after its final event) so
        that the connection can be reused; close it if that takes longer than ``timeout``."""
        if self._done:
            return
        read_timeout, self._read_timeout = self._read_timeout, timeout
        try:
            async for _ in self.aiter_bytes():
                pass
        except HTTPError:
            pass
        finally:
            self._read_timeout = read_timeout
            await self.aclose()

    async def read(self, limit: int = 64 << 20) -> bytes:
        """The whole body (up to ``limit`` bytes, else :class:`HTTPProtocolError`)."""
        out = bytearray()
        async for data in self.aiter_bytes():
            out += data
            if len(out) > limit:
                await self.aclose()
                raise HTTPProtocolError(f"a response body over {limit} bytes")
        return bytes(out)

    async def json(self) -> object:
        body = await self.read()
        try:
            return jsonlib.loads(body)
        except ValueError as error:
            raise HTTPProtocolError(f"a response that is not JSON: {body[:60]!r}") from error

    def _release(self, keep_alive: bool) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if keep_alive and self._client is not None:
            self._client._give_back(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        """Stop reading; a body not read to its end closes the connection."""
        if not self._done:
            self._done = True
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
                with contextlib.suppress(TimeoutError, ConnectionError, OSError, ssl.SSLError):
                    await asyncio.wait_for(conn.writer.wait_closed(), 1.0)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class HTTPClient:
    """Requests to one or more hosts, from one event loop, reusing idle connections.

    ``ssl_context`` defaults to :func:`ssl.create_default_context` (certificates checked);
    ``max_idle`` connections per host are kept for reuse.
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 4,
        user_agent: str = "flowcat-ft",
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.max_idle = max_idle
        self.user_agent = user_agent
        self.retries = 0
        """How many retries this client made (a usage counter)."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str | Secret] | None = None,
        json: object = None,
        content: bytes | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
    ) -> Response:
        """Send a request and return once the response head has arrived (with retries).

        The body is JSON-encoded from ``json``, or sent as ``content``. A status of 400 or
        more raises :class:`HTTPStatusError` (after reading up to ``MAX_ERROR_BODY`` bytes of
        the body); 429 and 5xx are retried first, as the policy says.
        """
        policy = retry or self.retry
        all_headers: dict[str, str | Secret] = {"User-Agent": self.user_agent}
        body = content
        if json is not None:
            body = jsonlib.dumps(json).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})

        def counted(retry_number: int, error: BaseException, delay: float) -> None:
            self.retries += 1

        return await retrying(
            lambda: self._send(method, url, all_headers, body, timeouts or self.timeouts),
            policy,
            what=f"{method} {redact(url)}",
            on_retry=counted,
        )

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str | Secret],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> Response:
        origin = _Origin.of(url)
        data = build_request(method, origin.target, origin.host_header, headers, body)
        logger.debug("%s %s %s", method, redact(url), redact_headers(headers))
        conn = self._idle_connection(origin.key)
        if conn is not None:
            try:
                return await self._exchange(conn, method, url, data, timeouts, reused=True)
            except _StaleConnection:
                pass  # the server closed the idle connection as we reused it: a fresh one
        conn = await self._connect(origin, timeouts.connect)
        return await self._exchange(conn, method, url, data, timeouts, reused=False)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        url: str,
        data: bytes,
        timeouts: Timeouts,
        reused: bool,
    ) -> Response:
        parser = ResponseParser(head_request=method == "HEAD")
        pending: deque[ResponseEvent] = deque()
        received = False
        try:
            conn.writer.write(data)
            await asyncio.wait_for(conn.writer.drain(), timeouts.connect)
            while parser.head is None:
                try:
                    chunk = await asyncio.wait_for(conn.reader.read(65536), timeouts.head)
                except TimeoutError:
                    raise HTTPTimeoutError(
                        f"no response from {redact(url)} within {timeouts.head:g} s"
                    ) from None
                if not chunk and reused and not received:
                    raise _StaleConnection
                received = True
                pending.extend(parser.feed(chunk) if chunk else parser.eof())
        except _StaleConnection:
            conn.close()
            raise
        except HTTPError:
            conn.close()
            raise
        except (ConnectionError, OSError) as error:
            conn.close()
            if reused and not received:
                raise _StaleConnection from None
            raise HTTPConnectError(f"{redact(url)}: {type(error).__name__}: {error}") from None
        except BaseException:
            conn.close()
            raise
        head = parser.head
        response = Response(
            head.status, head.reason, head.headers, url, conn, parser, self, pending, timeouts.read
        )
        if head.status >= 400:
            text = await self._error_body(response)
            raise HTTPStatusError(head.status, head.reason, head.headers, text, redact(url))
        return response

    async def _error_body(self, response: Response) -> str:
        out = bytearray()
        try:
            async for data in response.aiter_bytes():
                out += data
                if len(out) >= MAX_ERROR_BODY:
                    break
        except HTTPError:
            pass
        finally:
            await response.aclose()
        return bytes(out[:MAX_ERROR_BODY]).decode("utf-8", "replace")

    async def _connect(self, origin: _Origin, timeout: float) -> _Connection:
        context = None
        if origin.scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise HTTPTimeoutError(
                f"could not connect to {origin.host}:{origin.port} within {timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as error:
            raise HTTPConnectError(
                f"could not connect to {origin.host}:{origin.port}: {error}"
            ) from None
        return _Connection(reader, writer, origin.key)

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Connection) -> None:
        conns = self._idle.setdefault(conn.origin, [])
        if len(conns) < self.max_idle and conn.usable():
            conns.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
