"""The WebSocket server transport: carriers' media streams (and raw audio) in, on every core.

Connections are spread over several event-loop threads (one per core by default), each
with its own listening socket on the same port (``SO_REUSEPORT``: the kernel balances
new connections). The URL path picks the carrier's serializer; ``/health``, ``/ready`` and
``/metrics`` answer plain HTTP (:mod:`flowcat_ft.transports.ops`). Usable from plain
threads::

    server = WebSocketServer(runtime, pipeline, port=8765).start()
    ...
    server.stop()
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from flowcat_ft.loops import EventLoopThread
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.runtime import Runtime
from flowcat_ft.serializers import Serializer, make_serializer
from flowcat_ft.transports.ops import prometheus_text
from flowcat_ft.transports.pacer import Ticker
from flowcat_ft.transports.session import MediaOptions, MediaSession

logger = logging.getLogger("flowcat_ft.transports")

SerializerFactory = Callable[[Mapping[str, str]], Serializer]
"""Makes a connection's serializer from its URL's query parameters."""

CARRIERS = ("twilio", "telnyx", "plivo", "exotel", "vonage", "raw")


def default_routes() -> dict[str, SerializerFactory]:
    """``/twilio``, ``/telnyx``, ... ``/raw``: one path per serializer; query parameters
    (``?codec=mulaw&sample_rate=8000``) become the serializer's options."""
    return {f"/{name}": _by_name(name) for name in CARRIERS}


def _by_name(name: str) -> SerializerFactory:
    def make(query: Mapping[str, str]) -> Serializer:
        options = {k: int(v) if v.isdigit() else v for k, v in query.items()}
        return make_serializer(name, **options)

    return make


class WebSocketServer:
    """Serves media-stream WebSocket connections, one call per connection.

    ``loops``: event-loop threads (default: one per core); ``max_calls``: connections past
    it are refused with close code 1013 (try again later); ``max_message_bytes``: larger
    messages close the connection with 1009; ``options``: see :class:`MediaOptions`.

    Threading contract: :meth:`start` and :meth:`stop` from any one thread; ``_active``
    (the sessions open now, across all loops), ``close_codes`` and ``refused`` are written
    under ``_lock``; ``_stopping`` is set once by :meth:`stop` and read by the loops.
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
    ) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.host = host
        self.port = port
        self.loop_count = loops or os.process_cpu_count() or 1
        self.routes = dict(routes if routes is not None else default_routes())
        self.options = options or MediaOptions()
        self.max_calls = max_calls
        self.max_message_bytes = max_message_bytes
        self.refused = 0
        self.close_codes: Counter[int] = Counter()  # how connections ended, by close code
        self._lock = threading.Lock()
        self._active: set[MediaSession] = set()
        self._loops: list[EventLoopThread] = []
        self._servers: list[Server] = []
        self._stopping = False

    @property
    def sessions(self) -> list[MediaSession]:
        with self._lock:
            return list(self._active)

    def start(self) -> WebSocketServer:
        """Listen on every loop; returns once all are accepting connections."""
        self.runtime.start()
        for i in range(self.loop_count):
            io = EventLoopThread(f"flowcat-ws-{i}")
            self._loops.append(io)
            ticker = Ticker(io.loop)
            server = io.submit(self._listen(io, ticker)).result(10)
            self._servers.append(server)
            if self.port == 0:  # the first loop picked a free port; the others share it
                self.port = server.sockets[0].getsockname()[1]
        logger.info("listening on ws://%s:%d (%d loops)", self.host, self.port, self.loop_count)
        return self

    async def _listen(self, io: EventLoopThread, ticker: Ticker) -> Server:
        async def handler(ws: ServerConnection) -> None:
            await self._serve(ws, io, ticker)

        return await serve(
            handler,
            self.host,
            self.port,
            reuse_port=True,
            max_size=self.max_message_bytes,
            compression=None,
            process_request=self._http,
        )

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer the operations endpoints (:mod:`flowcat_ft.transports.ops`); anything
        else goes on to the WebSocket handshake."""
        path = urlsplit(request.path).path
        if path == "/health":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/ready":
            with self._lock:
                full = self.max_calls is not None and len(self._active) >= self.max_calls
            if self._stopping or full:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
            return connection.respond(HTTPStatus.OK, "ready\n")
        if path == "/metrics":
            text = prometheus_text(self.runtime.metrics(), self.stats())
            response = connection.respond(HTTPStatus.OK, text)
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        return None

    def stats(self) -> dict[str, object]:
        """Connections open now, refused, and closed by close code."""
        with self._lock:
            return {
                "connections": len(self._active),
                "refused": self.refused,
                "close_codes": dict(self.close_codes),
            }

    async def _serve(self, ws: ServerConnection, io: EventLoopThread, ticker: Ticker) -> None:
        url = urlsplit(ws.request.path)
        factory = self.routes.get(url.path)
        if factory is None:
            await ws.close(1008, f"no media stream at {url.path}; try one of {sorted(self.routes)}")
            return
        try:
            serializer = factory(dict(parse_qsl(url.query)))
        except (TypeError, ValueError) as error:
            await ws.close(1008, f"bad stream options: {error}"[:120])
            return
        session = MediaSession(
            ws, serializer, self.runtime, self.pipeline, io, ticker, self.options
        )
        with self._lock:
            full = self.max_calls is not None and len(self._active) >= self.max_calls
            if full:
                self.refused += 1
                self.close_codes[1013] += 1
            else:
                self._active.add(session)
        if full:
            await ws.close(1013, "the server is at capacity; try again later")
            return
        try:
            await session.run()
        finally:
            with self._lock:
                self._active.discard(session)
                self.close_codes[session.close_code or 1006] += 1

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, end live calls (cancelled after ``grace`` s), stop the loops."""
        self._stopping = True
        for io, server in zip(self._loops, self._servers, strict=True):
            io.submit(_close_server(server, grace)).result(grace + 10)
        for io in self._loops:
            io.stop()
        self._loops.clear()
        self._servers.clear()


async def _close_server(server: Server, grace: float) -> None:
    server.close(close_connections=False)
    try:
        await asyncio.wait_for(server.wait_closed(), grace)
    except TimeoutError:
        server.close(close_connections=True)
        await server.wait_closed()
