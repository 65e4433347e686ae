"""The WebSocket server transport: carriers' media streams (and raw audio) in, on every core.

Connections are spread over several event-loop threads (one per core by default), each
with its own listening socket on the same port (``SO_REUSEPORT``: the kernel balances
new connections). The URL path picks the carrier's serializer. The same port answers plain
HTTP (:mod:`flowcat_ft.transports.http`): ``/health``, ``/ready`` and ``/metrics``
(:mod:`flowcat_ft.transports.ops`) and any pages the application adds; other WebSocket
endpoints (signalling, live feeds) can be added beside the media streams.

A new call is refused while the server drains (:meth:`WebSocketServer.drain`), at
``max_calls``, or while measured load leaves no headroom (:mod:`flowcat_ft.transports.load`);
``/ready`` answers 503 for the same reasons, so a load balancer sends calls elsewhere.
Usable from plain threads::

    server = WebSocketServer(runtime, pipeline, port=8765).start()
    ...
    server.stop()

Every request is checked before it is served, cheapest first: the request head's size
(:class:`~flowcat_ft.transports.http.HttpConnection`, 414 and 431), its client's limits
(:class:`~flowcat_ft.transports.limits.ClientLimits`, 429: connections being opened, then
the rate of WebSocket handshakes and of each limited page), then the path's guard (401 or
403, say). A handshake not done within ``handshake_timeout`` (TLS included) is dropped.
So a refused peer opens no call and takes no slab.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import inspect
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from flowcat_ft.loops import EventLoops, EventLoopThread
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.runtime import Runtime
from flowcat_ft.serializers import SERIALIZERS, Serializer, StreamStarted, make_serializer
from flowcat_ft.serializers.base import quoted
from flowcat_ft.transports.call_edge import TurnLog
from flowcat_ft.transports.clients import Client, TrustedProxies, client_key
from flowcat_ft.transports.connection import MediaConnection
from flowcat_ft.transports.edge import LoopEdge
from flowcat_ft.transports.http import (
    CREDENTIAL_PARAMS,
    Guard,
    HttpRequest,
    HttpResponse,
    PageHandler,
)
from flowcat_ft.transports.limits import ClientLimits
from flowcat_ft.transports.load import LoadBounds, LoadMonitor
from flowcat_ft.transports.ops import prometheus_text
from flowcat_ft.transports.pacer import Ticker
from flowcat_ft.transports.session import MediaOptions, MediaSession, close_reason

logger = logging.getLogger("flowcat_ft.transports")

SerializerFactory = Callable[[Mapping[str, str]], Serializer]
"""Makes a connection's serializer from its URL's query parameters."""

SocketHandler = Callable[[ServerConnection], Awaitable[None]]
"""Serves a WebSocket endpoint that is not a media stream, for as long as it is open."""

StartCheck = Callable[[str, StreamStarted], str | None]
"""Checks a media stream's start against its handshake's request target (path and query):
None lets the call open, a reason refuses it (the connection closes with 1008 first)."""

CARRIERS = ("twilio", "telnyx", "plivo", "exotel", "vonage", "raw")


def split_cores(loops: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """(event-loop threads, stage threads) that together use ``cores`` (default: those this
    process may run on) and no more: half each by default, at least one of each, or
    ``loops`` loops and the rest stage threads.

    Measured on 2 cores (echo, 200 calls, 3.13t): one loop and one stage thread used the
    least CPU per frame and had a fifth of the context switches of 2 loops + 2 stage
    threads, whose four busy threads preempted each other (``bench/results``)."""
    cores = cores or os.process_cpu_count() or 1
    loops = loops or max(1, cores // 2)
    return loops, max(1, cores - loops)


def default_routes(carriers: Iterable[str] = CARRIERS) -> dict[str, SerializerFactory]:
    """``/twilio``, ``/telnyx``, ... ``/raw``: one path per serializer (of ``carriers``).
    The query parameters a serializer takes (its ``query_options``: ``/raw?codec=mulaw&
    sample_rate=8000``) become its options; any other is refused, naming those it takes.
    A carrier's route takes none, and ignores what the carrier adds to its URL. A route
    also takes the handshakes for the paths one segment below it (``/twilio/<token>``),
    for stream URLs that carry a credential where a carrier passes no query string."""
    return {f"/{name}": _by_name(name) for name in carriers}


def _by_name(name: str) -> SerializerFactory:
    def make(query: Mapping[str, str]) -> Serializer:
        return make_serializer(name, **route_options(SERIALIZERS[name], query))

    return make


def route_options(serializer: type[Serializer], query: Mapping[str, str]) -> dict[str, object]:
    """The options a URL's ``query`` sets for ``serializer``: numbers as ``int``, the rest as
    text for the serializer to check; credentials (:data:`CREDENTIAL_PARAMS`) are left out.
    Raises ``ValueError`` naming an option the serializer does not take."""
    taken = serializer.query_options
    options: dict[str, object] = {}
    for name, value in query.items():
        if name in CREDENTIAL_PARAMS or (name not in taken and not taken):
            continue
        if name not in taken:
            raise ValueError(f"unknown option {quoted(name)}: this route takes {', '.join(taken)}")
        number = value.isascii() and value.isdecimal() and len(value) < 10
        options[name] = int(value) if number else value
    return options


class WebSocketServer:
    """Serves media-stream WebSocket connections, one call per connection.

    ``loops``: event-loop threads (default: the cores the runtime's stage threads leave, at
    least one; see :func:`split_cores`); ``max_calls``: connections past
    it are refused with close code 1013 (try again later); ``max_message_bytes``: larger
    messages close the connection with 1009; ``options``: see :class:`MediaOptions`;
    ``pages``: plain HTTP endpoints by path, added to the operations endpoints;
    ``sockets``: WebSocket endpoints by path that are not media streams; ``guards``: checks
    by path, run before a page or a handshake (see :data:`~flowcat_ft.transports.http.Guard`;
    a media route's guard also runs for the handshakes below it); ``start_checks``: checks by
    media route of each stream's start, before its call opens (see :data:`StartCheck`).
    ``limits``: per client address (see :class:`~flowcat_ft.transports.limits.ClientLimits`;
    its rates: ``"handshake"`` for WebSocket handshakes, a path for a page), none by
    default; ``exempt``: the requests whose rates are not limited (a carrier's media
    streams, the server's own helpers); ``proxies``: whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` to believe (:mod:`~flowcat_ft.transports.clients`);
    ``handshake_timeout``: seconds a connection has to complete its handshake (TLS's
    included); ``tls``: serve ``https`` and ``wss`` with this context.
    ``load``: the bounds on measured load past which new calls are refused (None: calls
    are refused only at ``max_calls`` and while draining).

    Threading contract: :meth:`start` and :meth:`stop` from any one thread; ``_active``
    (the sessions open now, across all loops), ``close_codes``, ``refused``,
    ``refusals`` and ``_ended_pauses`` are written under ``_lock``, whose condition
    ``_calls_changed`` is notified when a call ends; ``_draining`` is set once, under
    ``_lock``, by :meth:`drain`, and read by the loops (under the lock where a call is
    admitted). ``_monitor`` is set once by :meth:`start` (the loops may see None before: no
    verdict yet); its verdict is written by its own thread (see
    :class:`~flowcat_ft.transports.load.LoadMonitor`).
    """

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        loops: int | None = None,
        routes: Mapping[str, SerializerFactory] | None = None,
        options: MediaOptions | None = None,
        max_calls: int | None = None,
        max_message_bytes: int = 64 * 1024,
        pages: Mapping[str, PageHandler] | None = None,
        sockets: Mapping[str, SocketHandler] | None = None,
        guards: Mapping[str, Guard] | None = None,
        start_checks: Mapping[str, StartCheck] | None = None,
        limits: ClientLimits | None = None,
        exempt: Callable[[HttpRequest], bool] = lambda request: False,
        proxies: TrustedProxies | None = None,
        handshake_timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        load: LoadBounds | None = None,
    ) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.host = host
        self.port = port
        self.loop_count = loops or max(1, (os.process_cpu_count() or 1) - runtime.threads)
        self.routes = dict(routes if routes is not None else default_routes())
        self.options = options or MediaOptions()
        self.max_calls = max_calls
        self.max_message_bytes = max_message_bytes
        self.pages: dict[str, PageHandler] = {
            "/health": self._health,
            "/ready": self._ready,
            "/metrics": self._metrics,
            **(pages or {}),
        }
        self.sockets = dict(sockets or {})
        self.guards = dict(guards or {})
        self.start_checks = dict(start_checks or {})
        self.limits = limits
        self.exempt = exempt
        self.proxies = proxies or TrustedProxies()
        self.handshake_timeout = handshake_timeout
        self.tls = tls
        self.load = load
        self.refused = 0
        self.refusals: Counter[str] = Counter()  # calls refused, by reason (see _REFUSALS)
        self.close_codes: Counter[int] = Counter()  # how connections ended, by close code
        self._ended_pauses: Counter[str] = Counter()  # the ended calls' pause_counts, summed
        self.turns = TurnLog(1000)  # every call's answered turns (from any loop)
        self._lock = threading.Lock()
        self._calls_changed = threading.Condition(self._lock)
        self._active: set[MediaSession] = set()
        self._loops = EventLoops("flowcat-ws", self.loop_count)
        self._servers: list[Server] = []
        self._draining = False
        self._monitor: LoadMonitor | None = None

    @property
    def loops(self) -> list[EventLoopThread]:
        """The event-loop threads serving connections, once started (other transports
        may run on them too, as SIP does; they stop with this server)."""
        return list(self._loops)

    @property
    def sessions(self) -> list[MediaSession]:
        with self._lock:
            return list(self._active)

    def start(self) -> WebSocketServer:
        """Listen on every loop; returns once all are accepting connections.

        Raises ``OSError`` if the port is taken, by anything: ``SO_REUSEPORT`` would let a
        second flowcat-ft quietly share the port (and its calls) with the first.
        """
        self._refuse_a_port_in_use()
        self.runtime.start()
        try:
            for io in self._loops.start():
                ticker = Ticker(io.loop)
                edge = LoopEdge(io, self.runtime.pool)
                server = io.submit(self._listen(io, ticker, edge)).result(10)
                self._servers.append(server)
                if self.port == 0:  # the first loop picked a free port; the others share it
                    self.port = server.sockets[0].getsockname()[1]
        except OSError:
            self.stop(grace=0)
            raise
        if self.load is not None:
            self._monitor = LoadMonitor(self.load, self.loops, self.runtime).start()
        scheme = "wss" if self.tls is not None else "ws"
        logger.info(
            "listening on %s://%s:%d (%d loops)", scheme, self.host, self.port, self.loop_count
        )
        return self

    def _refuse_a_port_in_use(self) -> None:
        if self.port == 0:
            return
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        try:
            with socket.create_connection((host, self.port), timeout=1):
                pass
        except OSError:
            return  # nobody answers: the port is free (or bind() will say why not)
        raise OSError(errno.EADDRINUSE, f"something already answers on {host}:{self.port}")

    async def _listen(self, io: EventLoopThread, ticker: Ticker, edge: LoopEdge) -> Server:
        async def handler(ws: ServerConnection) -> None:
            await self._serve(ws, io, ticker, edge)

        def connection(*args: object, **kwargs: object) -> _Connection:
            return _Connection(self.limits, self.proxies, *args, **kwargs)

        return await serve(
            handler,
            self.host,
            self.port,
            reuse_port=True,
            max_size=self.max_message_bytes,
            compression=None,
            process_request=self._admit,
            create_connection=connection,
            open_timeout=self.handshake_timeout,
            ssl=self.tls,
        )

    async def _admit(self, connection: _Connection, request: Request) -> Response | None:
        """While draining, refuse a new call's handshake with 503 (a load balancer may try
        another instance); everything else goes on to :meth:`_http`. Endpoints in
        ``sockets`` are not calls: they are not refused."""
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if self._draining and upgrade and urlsplit(request.path).path not in self.sockets:
            with self._lock:
                self.refused += 1
                self.refusals["draining"] += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, _REFUSALS["draining"] + "\n")
        return await self._http(connection, request)

    async def _http(self, connection: _Connection, request: Request) -> Response | None:
        """Answer a page (a plain request; a WebSocket handshake to the same path is not
        one); anything else goes on to the WebSocket handshake (both once the client's
        limits and the path's guard, if it has one, let the request through)."""
        url = urlsplit(request.path)
        client = connection.client(request.headers)
        http_request = HttpRequest(
            connection.method,
            url.path,
            dict(parse_qsl(url.query)),
            request.headers,
            connection.body,
            request.path,
            client.address,
            client.secure,
            client.host or request.headers.get("Host", ""),
        )
        if (refusal := self._limit(connection, http_request)) is not None:
            return _to_websockets(refusal)
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        route = self._route(url.path) if upgrade else url.path
        guard = self.guards.get(route)
        if guard is not None:
            refusal = guard(http_request)
            if inspect.isawaitable(refusal):
                refusal = await refusal
            if refusal is not None:
                return _to_websockets(refusal)
        page = None if upgrade else self.pages.get(url.path)
        if page is None:
            if connection.method == "GET" and (upgrade or route in self.routes):
                if route in self.routes:
                    connection.hold_messages()  # for its MediaSession
                return None  # the handshake (or websockets' 426 for a plain GET)
            return connection.respond(HTTPStatus.NOT_FOUND, f"nothing at {url.path}\n")
        if connection.body_error is not None:
            answer = HttpResponse.error(connection.body_error, connection.body_error.phrase)
        else:
            try:
                answer = page(http_request)
                if inspect.isawaitable(answer):
                    answer = await answer
            except Exception:
                logger.exception("page %s failed", url.path)
                answer = HttpResponse.error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
        return _to_websockets(answer)

    def _route(self, path: str) -> str:
        """The path whose guard and media route serve a handshake for ``path``: itself, or
        for a path one segment below a media route (``/twilio/<token>``), that route."""
        if path in self.routes or path in self.pages or path in self.sockets:
            return path
        parent = path.rpartition("/")[0]
        return parent if parent in self.routes else path

    def _limit(self, connection: _Connection, request: HttpRequest) -> HttpResponse | None:
        """Count the request against its client's limits: None, or the 429 refusing it."""
        limits = self.limits
        if limits is None:
            return None
        if not connection.counted and not connection.count(request.client):
            at_most = limits.connections
            return _too_many(
                f"too many connections from {request.client}: at most {at_most} at once"
            )
        if self.exempt(request):
            return None
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        kind = "handshake" if websocket else request.path
        wait = limits.take(kind, client_key(request.client), time.monotonic())
        if not wait:
            return None
        what = "WebSocket handshakes" if websocket else f"requests to {request.path}"
        rate = limits.rates[kind]
        refusal = _too_many(
            f"too many {what} from {request.client}: at most {rate.per_minute:g} a minute"
        )
        refusal.headers["Retry-After"] = str(math.ceil(wait))
        return refusal

    # -- the operations endpoints (see flowcat_ft.transports.ops) --------------------------

    def _health(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(HTTPStatus.OK, "ok\n")

    def _ready(self, request: HttpRequest) -> HttpResponse:
        with self._lock:
            reason = self._refusal()
        if reason is None:
            return HttpResponse(HTTPStatus.OK, "ready\n")
        if reason == "capacity":
            reason = f"at capacity (max_calls {self.max_calls})"
        elif reason == "overloaded" and self._monitor is not None:
            reason += f" ({self._monitor.headroom.describe()})"
        return HttpResponse(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n")

    def _refusal(self) -> str | None:
        """Why a new call would be refused now, a key of ``_REFUSALS`` (None: it would be
        taken). Under ``_lock``."""
        if self._draining:
            return "draining"
        if self.max_calls is not None and len(self._active) >= self.max_calls:
            return "capacity"
        if self._monitor is not None and self._monitor.headroom.overloaded:
            return "overloaded"
        return None

    def _metrics(self, request: HttpRequest) -> HttpResponse:
        text = prometheus_text(self.runtime.metrics(), self.stats())
        return HttpResponse(HTTPStatus.OK, text, "text/plain; version=0.0.4; charset=utf-8")

    def stats(self) -> dict[str, object]:
        """Connections open now, the limit, calls refused (in all, and by every reason),
        closed by close code, whether the server is draining, ready, and its measured load;
        and with limits, theirs (``limits``: see :meth:`ClientLimits.stats`)."""
        monitor = self._monitor
        with self._lock:
            stats: dict[str, object] = {
                "connections": len(self._active),
                "max_calls": self.max_calls,
                "refused": self.refused,
                "refusals": {reason: self.refusals[reason] for reason in _REFUSALS},
                "close_codes": dict(self.close_codes),
                "draining": self._draining,
                "ready": self._refusal() is None,
                "load": monitor.snapshot() if monitor is not None else None,
            }
        if self.limits is not None:
            stats["limits"] = self.limits.stats()
        return stats

    def pause_counts(self) -> dict[str, int]:
        """The output's pauses over every call since the start, ended and live (see
        :attr:`~flowcat_ft.transports.call_edge.CallEdge.pause_counts`)."""
        with self._lock:
            counts = self._ended_pauses.copy()
            live = list(self._active)
        for session in live:
            counts.update(session.pause_counts)
        return {key: counts[key] for key in ("pauses", "interrupted", "resumed")}

    async def _serve(
        self, ws: _Connection, io: EventLoopThread, ticker: Ticker, edge: LoopEdge
    ) -> None:
        ws.uncount()  # open: a call (max_calls counts those) or one of the server's sockets
        url = urlsplit(ws.request.path)
        socket_handler = self.sockets.get(url.path)
        if socket_handler is not None:
            await socket_handler(ws)
            return
        route = self._route(url.path)
        factory = self.routes.get(route)
        if factory is None:
            routes = ", ".join(sorted(self.routes))
            await ws.close(1008, close_reason(f"no media stream at {url.path}; try {routes}"))
            return
        try:
            serializer = factory(dict(parse_qsl(url.query)))
        except ValueError as error:  # its message is written for the peer
            await ws.close(1008, close_reason(f"bad stream options: {error}"))
            return
        check = self.start_checks.get(route)
        session = MediaSession(
            ws,
            serializer,
            self.runtime,
            self.pipeline,
            io,
            ticker,
            edge,
            self.options,
            self.turns,
            check_start=None if check is None else functools.partial(check, ws.request.path),
        )
        with self._lock:
            reason = self._refusal()
            if reason is not None:
                self.refused += 1
                self.refusals[reason] += 1
                self.close_codes[1013] += 1
            else:
                self._active.add(session)
        if reason is not None:
            await ws.close(1013, _REFUSALS[reason])
            return
        try:
            await session.run()
        finally:
            with self._lock:
                self._active.discard(session)
                self.close_codes[session.close_code or 1006] += 1
                self._ended_pauses.update(session.pause_counts)
                self._calls_changed.notify_all()

    def drain(self) -> None:
        """Take no new call from now on: ``/ready`` answers 503 and new calls' handshakes
        are refused with 503, while live calls go on. ``/health`` and the pages still
        answer. Cannot be undone; calling it again changes nothing."""
        with self._lock:
            self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    def wait_for_calls(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) until no call is live; returns
        whether none is."""
        with self._calls_changed:
            return self._calls_changed.wait_for(lambda: not self._active, timeout)

    def stop(self, grace: float = 5.0) -> None:
        """Drain, let live calls finish for up to ``grace`` s, then close every connection
        (calls still live are cancelled), and stop the loops.

        Only calls are waited for: other WebSocket endpoints (a companion's control link,
        say) stay open while the calls finish, and are closed with the rest.
        """
        self.drain()
        self.wait_for_calls(grace)
        closing = [  # fewer servers than loops where start() failed to listen on one
            io.submit(_close_server(server))
            for io, server in zip(self._loops, self._servers, strict=False)
        ]
        for future in closing:
            future.result(_CLOSING_HANDSHAKE_SECS + 10)
        if self._monitor is not None:
            self._monitor.stop()
        self._loops.stop()
        self._servers.clear()


_REFUSALS = {
    "draining": "the server is draining; connect to another instance",
    "capacity": "the server is at capacity; try again later",
    "overloaded": "the server is overloaded; try again later",
}
"""Why a call is refused, by reason: the close reason (1013) or the handshake's 503 body."""


class _Connection(MediaConnection):
    """A connection counted against its client's :class:`ClientLimits` until it closes or
    opens as a WebSocket: from the moment it is accepted, by its peer's address, or, from a
    trusted proxy, once its head says whose request it carries. Runs on its loop."""

    counted = ""  # the client key it is counted under ("" while not counted)

    def __init__(
        self, limits: ClientLimits | None, proxies: TrustedProxies, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._proxies = proxies
        self._peer = ""
        self._tls = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        self._tls = transport.get_extra_info("ssl_object") is not None
        if self._limits is None or self._peer in self._proxies:
            return  # a proxy's connections are counted by the client each one carries
        if not self.count(self._peer):
            at_most = self._limits.connections
            self.refuse(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"too many connections from {self._peer}: at most {at_most} at once",
            )

    def client(self, headers: Headers) -> Client:
        """Who the request on this connection comes from."""
        return self._proxies.client(self._peer, headers, self._tls)

    def count(self, address: str) -> bool:
        """Count this connection against ``address``'s limit; False if it has its fill."""
        assert self._limits is not None and not self.counted
        key = client_key(address)
        if not self._limits.open(key):
            return False
        self.counted = key
        return True

    def uncount(self) -> None:
        """Stop counting this connection against its client (if it was counted)."""
        if self.counted and self._limits is not None:
            self._limits.close(self.counted)
            self.counted = ""

    def connection_lost(self, exc: Exception | None) -> None:
        self.uncount()
        super().connection_lost(exc)


def _too_many(message: str) -> HttpResponse:
    return HttpResponse.error(HTTPStatus.TOO_MANY_REQUESTS, message)


def _to_websockets(answer: HttpResponse) -> Response:
    body = answer.body.encode() if isinstance(answer.body, str) else answer.body
    headers = Headers(
        Date=formatdate(usegmt=True),
        Connection="close",
        **{"Content-Length": str(len(body)), "Content-Type": answer.content_type},
    )
    headers.update(answer.headers)
    status = HTTPStatus(answer.status)
    return Response(status.value, status.phrase, headers, body)


async def _close_server(server: Server) -> None:
    """Stop accepting; close what is still open (1001)."""
    server.close(close_connections=False)  # idempotent: later calls change nothing
    closing = [
        connection.close(CloseCode.GOING_AWAY, "the server is shutting down")
        for connection in server.connections
    ]
    try:  # a peer that does not answer the closing handshake is not waited for
        async with asyncio.timeout(_CLOSING_HANDSHAKE_SECS):
            await asyncio.gather(*closing, return_exceptions=True)
    except TimeoutError:
        for connection in list(server.all_connections):  # closing ones too
            connection.transport.abort()
    await server.wait_closed()


_CLOSING_HANDSHAKE_SECS = 2.0
