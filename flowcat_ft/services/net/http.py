"""Providers' HTTP: requests through httpx, with the retries, timeouts and errors a call needs.

httpx (with h2) speaks the protocol: HTTP/1.1, and HTTP/2 where the provider offers it in
TLS's ALPN (then many calls' requests share one connection); pools of connections kept
alive; proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``,
``NO_PROXY``, read when a client is made).

**Streamed responses stay on HTTP/1.1.** An LLM's tokens or a TTS's audio are often cut
off (the caller barges in), and the provider must see the client go away, or it goes on
generating (and billing). Over HTTP/1.1, closing a response before its end closes its
connection. httpcore does not reset an HTTP/2 stream closed before its end
(encode/httpcore#943, declined): the provider would go on sending, and the unread data
would use up the shared connection's flow-control window until every stream on it stalls.
So a request says whether its response is ``streamed`` (the default); only those read
whole (a transcription's JSON) go over HTTP/2.

This module adds:

- **Timeouts per phase** (:class:`Timeouts`): connecting, the response head, and each wait
  for more of the body, so a provider that stalls mid-stream is an error, not a silence.
- **Retries** of connect errors, 429 and 5xx per a
  :class:`~flowcat_ft.services.net.retry.RetryPolicy`, before anything has streamed.
- **Errors of its own** (:class:`HTTPError` and its subclasses), whose messages say what
  failed and never carry a credential; a status of 400 or more raises
  :class:`HTTPStatusError` with the status, the headers and the start of the body.
- **Credentials**: header values may be :class:`~flowcat_ft.services.net.auth.Secret`\\ s,
  revealed only into the request; httpx's and httpcore's loggers scrub secrets like this
  package's (:func:`~flowcat_ft.services.net.auth.get_logger`).

Threading: an :class:`HTTPClient` and its responses belong to the event loop they are used
on (httpx's ``AsyncClient`` is not thread-safe). The cloud services share one per event
loop and TLS setting (:class:`LoopClients`), held while some call on the loop uses it.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import httpx

from flowcat_ft.services.net.auth import Secret, get_logger, redact
from flowcat_ft.services.net.retry import RetryPolicy, parse_retry_after, retrying

__all__ = [
    "HTTPClient",
    "HTTPConnectError",
    "HTTPError",
    "HTTPProtocolError",
    "HTTPStatusError",
    "HTTPTimeoutError",
    "LoopClients",
    "Response",
    "TLSKey",
    "Timeouts",
]

logger = get_logger("flowcat_ft.services.net")
get_logger("httpx")  # logs each request's URL at INFO level
get_logger("httpcore")  # logs its steps at DEBUG level

MAX_ERROR_BODY = 2048
"""How much of an error response's body is read and kept (the rest is not read)."""
ERROR_BODY_SHOWN = 300
"""How much of it an :class:`HTTPStatusError`'s message quotes."""


# -- errors -------------------------------------------------------------------------------


class HTTPError(Exception):
    """Base of this module's errors."""


class HTTPConnectError(HTTPError, ConnectionError):
    """The connection could not be made (refused, reset, a name, TLS or proxy failure)."""


class HTTPTimeoutError(HTTPError, TimeoutError):
    """Connecting, or waiting for the response or the next part of its body, took too long."""


class HTTPProtocolError(HTTPError):
    """The server broke HTTP: garbage instead of a response, a body cut short, a connection
    lost mid-body."""


class HTTPStatusError(HTTPError):
    """The server answered with an error status (400 or more).

    ``body`` is the start of the response body (at most ``MAX_ERROR_BODY`` bytes, decoded
    leniently); ``retry_after`` is the wait a ``Retry-After`` header asked for, in seconds.
    """

    def __init__(self, status: int, headers: httpx.Headers, body: str, url: str) -> None:
        self.status = status
        self.reason = httpx.codes.get_reason_phrase(status)
        self.headers = headers
        self.body = body
        self.url = url
        self.retry_after = parse_retry_after(headers.get("retry-after"))
        shown = body[:ERROR_BODY_SHOWN] + ("…" if len(body) > ERROR_BODY_SHOWN else "")
        super().__init__(redact(f"HTTP {status} {self.reason} from {url}: {shown}".rstrip(": ")))


def _error(error: httpx.HTTPError, url: str, timeouts: Timeouts, mid_body: bool) -> HTTPError:
    """This module's error for one of httpx's."""
    where = redact(url)
    detail = redact(str(error) or type(error).__name__)
    if isinstance(error, httpx.TimeoutException):
        if isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout):
            return HTTPTimeoutError(f"could not connect to {where} within {timeouts.connect:g} s")
        return HTTPTimeoutError(f"no data from {where} for {timeouts.read:g} s")
    if mid_body:
        return HTTPProtocolError(f"the response from {where} broke off mid-body: {detail}")
    if isinstance(error, httpx.ConnectError | httpx.ProxyError):
        return HTTPConnectError(f"could not connect to {where}: {detail}")
    if isinstance(error, httpx.NetworkError):
        return HTTPConnectError(f"{where}: {type(error).__name__}: {detail}")
    return HTTPProtocolError(f"{where}: {detail}")


# -- requests and responses ---------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed: ``connect``, to connect (TLS and a proxy's tunnel included);
    ``head``, from the start of a request (its connection included) to the response head;
    ``read``, for each wait for more of the body (a stall)."""

    connect: float = 5.0
    head: float = 15.0
    read: float = 15.0

    def for_httpx(self) -> httpx.Timeout:
        """httpx's per-operation timeouts: each socket read waits at most the longer of
        ``head`` and ``read`` (the shorter one is enforced over the phase it bounds)."""
        return httpx.Timeout(
            connect=self.connect,
            read=max(self.head, self.read),
            write=self.connect,
            pool=self.connect,
        )


class Response:
    """A response whose head has arrived; the body streams on demand.

    Read the body with :meth:`aiter_bytes` (or :meth:`read`, :meth:`json`); close it with
    :meth:`aclose` (or ``async with``). Closing a body not read to its end tells the server
    the client went away (over HTTP/1.1 the connection closes; over HTTP/2 the stream is
    reset), as a cancelled LLM stream must.
    """

    def __init__(self, response: httpx.Response, url: str, timeouts: Timeouts) -> None:
        self._response = response
        self.url = url
        self._timeouts = timeouts
        self._read_timeout = timeouts.read
        self._chunks = response.aiter_bytes()  # one iterator, whoever reads (see finish)

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self._response.headers

    @property
    def http_version(self) -> str:
        """``"HTTP/1.1"`` or ``"HTTP/2"``."""
        return self._response.http_version

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.http_version} from {redact(self.url)}>"

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (transfer and content codings removed); a wait
        for more longer than the ``read`` timeout raises :class:`HTTPTimeoutError`."""
        chunks = self._chunks
        try:
            while True:
                try:
                    async with asyncio.timeout(self._read_timeout):
                        data = await anext(chunks)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise HTTPTimeoutError(
                        f"no data from {redact(self.url)} for {self._read_timeout:g} s"
                    ) from None
                except httpx.HTTPError as error:
                    raise _error(error, self.url, self._timeouts, mid_body=True) from None
                if data:
                    yield data
        except BaseException:
            await self.aclose()
            raise

    async def finish(self, timeout: float = 0.5) -> None:
        """Read what is left of the body (a stream's last bytes after its final event) so
        that the connection can be reused; close it if that takes longer than ``timeout``."""
        self._read_timeout = timeout
        try:
            async for _ in self.aiter_bytes():
                pass
        except HTTPError:
            pass

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

    async def aclose(self) -> None:
        """Stop reading (see the class docstring)."""
        await self._chunks.aclose()
        await self._response.aclose()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class HTTPClient:
    """Requests from one event loop, over connections httpx pools: one pool for streamed
    responses (HTTP/1.1) and one for responses read whole (HTTP/2 where offered); see the
    module docstring.

    Certificates are verified against the system's CAs, or those in ``ca_file``. An
    ``ssl_context`` of the caller's is used as it is, over HTTP/1.1 only: httpx sets the
    ALPN protocols of the context it is given, and offering ``h2`` on a context a WebSocket
    service shares would break its handshakes. ``trust_env``: take proxies from the
    environment.
    """

    def __init__(
        self,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = True,
        user_agent: str = "flowcat-ft",
    ) -> None:
        if ssl_context is not None and ca_file is not None:
            raise ValueError("give ssl_context or ca_file, not both")

        def client(http2: bool) -> httpx.AsyncClient:
            # A context of its own per pool: httpx sets its ALPN protocols at each connect.
            context = ssl_context or ssl.create_default_context(
                cafile=os.fspath(ca_file) if ca_file is not None else None
            )
            return httpx.AsyncClient(
                verify=context,
                http2=http2,
                trust_env=trust_env,
                headers={"User-Agent": user_agent},
                timeout=Timeouts().for_httpx(),
                follow_redirects=False,
            )

        self._streams = client(http2=False)
        self._whole = client(http2=True) if ssl_context is None else self._streams

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str | Secret] | None = None,
        json: object = None,
        content: bytes | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
        streamed: bool = True,
    ) -> Response:
        """Send a request and return once the response head has arrived (with retries).

        The body is JSON-encoded from ``json``, or sent as ``content``. A status of 400 or
        more raises :class:`HTTPStatusError` (after reading up to ``MAX_ERROR_BODY`` bytes of
        the body); 429 and 5xx are retried first, as ``retry`` says (``on_retry(retry,
        error, delay)`` is told of each retry). ``streamed=False``: the response will be
        read whole, so it may go over HTTP/2 (see the module docstring).
        """
        timeouts = timeouts or Timeouts()
        plain = {
            name: value.reveal() if isinstance(value, Secret) else value
            for name, value in (headers or {}).items()
        }
        client = self._streams if streamed else self._whole
        try:
            request = client.build_request(
                method, url, headers=plain, json=json, content=content, timeout=timeouts.for_httpx()
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
            raise ValueError(f"not an http(s) URL: {redact(url)!r}: {error}") from None
        return await retrying(
            lambda: self._send(client, request, url, timeouts),
            retry or RetryPolicy(),
            what=f"{method} {redact(url)}",
            on_retry=on_retry,
        )

    async def _send(
        self, client: httpx.AsyncClient, request: httpx.Request, url: str, timeouts: Timeouts
    ) -> Response:
        try:
            async with asyncio.timeout(timeouts.head):
                sent = await client.send(request, stream=True)
        except TimeoutError:
            raise HTTPTimeoutError(
                f"no response from {redact(url)} within {timeouts.head:g} s"
            ) from None
        except httpx.UnsupportedProtocol as error:
            raise ValueError(f"not an http(s) URL: {redact(url)!r}: {error}") from None
        except httpx.HTTPError as error:
            raise _error(error, url, timeouts, mid_body=False) from None
        response = Response(sent, url, timeouts)
        if sent.status_code >= 400:
            body = await _error_body(response)
            raise HTTPStatusError(sent.status_code, sent.headers, body, redact(url))
        return response

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._streams.aclose()
        if self._whole is not self._streams:
            await self._whole.aclose()


async def _error_body(response: Response) -> str:
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


type TLSKey = str | ssl.SSLContext | None
"""What sets a client's TLS apart: a CA file's path, a caller's context, or None (the
system's CAs)."""


class LoopClients:
    """The HTTP clients of one event loop, one per TLS setting, shared by every call's
    services on the loop: a client is made when the first of them holds it and closed
    when the last lets it go (so its connections serve every call while there are some).

    Threading contract: ``_held`` is used on the loop's thread only (services hold and let
    go from coroutines running there).
    """

    def __init__(self) -> None:
        self._held: dict[TLSKey, tuple[HTTPClient, int]] = {}

    def hold(self, tls: TLSKey, make: Callable[[], HTTPClient]) -> HTTPClient:
        """The client for ``tls`` (made by ``make()`` if none is held); let it go once."""
        client, holders = self._held.get(tls) or (make(), 0)
        self._held[tls] = (client, holders + 1)
        return client

    async def let_go(self, tls: TLSKey) -> None:
        """One holder is done with the client for ``tls``; the last one closes it."""
        client, holders = self._held.pop(tls)
        if holders > 1:
            self._held[tls] = (client, holders - 1)
        else:
            await client.aclose()
