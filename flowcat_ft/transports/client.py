"""The WebSocket client transport: the agent dials out to a media-stream service.

The same :class:`~flowcat_ft.transports.session.MediaSession` as the server's runs the
connection, so a client speaks any carrier's protocol its serializer knows. Usable from
plain threads::

    client = WebSocketClient(runtime, pipeline, "ws://media.example/raw", RawSerializer())
    client.connect()
    client.wait()
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from websockets.asyncio.client import connect

from flowcat_ft.loops import EventLoopThread
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.runtime import Runtime
from flowcat_ft.serializers import Serializer
from flowcat_ft.transports.connection import MediaClientConnection
from flowcat_ft.transports.edge import LoopEdge
from flowcat_ft.transports.pacer import Ticker
from flowcat_ft.transports.session import MediaOptions, MediaSession


class WebSocketClient:
    """One outgoing connection carrying one call, on an event-loop thread of its own."""

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline,
        url: str,
        serializer: Serializer,
        *,
        options: MediaOptions | None = None,
        max_message_bytes: int = 64 * 1024,
    ) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.url = url
        self.serializer = serializer
        self.options = options or MediaOptions()
        self.max_message_bytes = max_message_bytes
        self.session: MediaSession | None = None
        self._io: EventLoopThread | None = None
        self._done: Future | None = None
        self._connected = threading.Event()

    def connect(self, timeout: float = 10.0) -> WebSocketClient:
        """Open the connection; returns once it is open (raises if it cannot be)."""
        self.runtime.start()
        self._io = EventLoopThread("flowcat-ws-client")
        self._done = self._io.submit(self._run())
        if not self._connected.wait(timeout):
            if self._done.done():
                self._done.result()  # raises the connection error
            raise TimeoutError(f"could not connect to {self.url} within {timeout} s")
        return self

    async def _run(self) -> None:
        async with connect(
            self.url,
            max_size=self.max_message_bytes,
            compression=None,
            open_timeout=10,
            create_connection=MediaClientConnection,
        ) as ws:
            io = self._io
            self.session = MediaSession(
                ws,
                self.serializer,
                self.runtime,
                self.pipeline,
                io,
                Ticker(io.loop),
                LoopEdge(io, self.runtime.pool),
                self.options,
            )
            self._connected.set()
            await self.session.run()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the connection has closed; False if ``timeout`` passed first."""
        try:
            self._done.result(timeout)
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            pass
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection, wait for its call to end (it is cancelled), and stop the
        loop thread."""
        if self._io is None:
            return
        if self.session is not None:
            self._io.submit(self.session.ws.close(1000, "client closing"))
            self.wait(timeout)
            if self.session.call is not None:
                self.session.call.wait(timeout)
        self._io.stop(timeout)
        self._io = None
