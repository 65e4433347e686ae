"""The AudioSocket server transport: Asterisk bridges a call's audio to the agent over TCP.

In the dialplan, ``same => n,AudioSocket(${UUID()},agent.example.com:9092)`` connects the
channel to this server; each connection is one call, served on one of the event loops
(each listens on the port, ``SO_REUSEPORT``). Audio comes and goes as 8 kHz signed
linear (resampled at the edge to the pipeline's rate, like every other transport, by
:class:`~flowcat_ft.transports.call_edge.CallEdge`); the agent's audio is paced out in
20 ms messages; an interruption drops what is queued, a pause holds it; DTMF becomes
:class:`~flowcat_ft.frames.InputDTMFFrame`\\ s; the agent hanging up sends a hangup
message once its audio has played. A connection that breaks the protocol is closed, with
a log line naming the problem, and its call cancelled; the others go on.

Threading contract: a session lives on the loop that accepted its connection;
``_active`` is guarded by ``_lock`` (sessions of every loop add and remove themselves).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING

from flowcat_ft.frames import EndFrame, Frame, InputDTMFFrame
from flowcat_ft.loops import EventLoops, EventLoopThread
from flowcat_ft.runtime import RuntimeFullError
from flowcat_ft.serializers import AudioIn, DtmfIn, ProtocolError, StreamStarted, StreamStopped
from flowcat_ft.transports.audiosocket.protocol import (
    AUDIO,
    HANGUP,
    SAMPLE_RATE,
    AudioSocketError,
    AudioSocketParser,
    message,
)
from flowcat_ft.transports.call_edge import CallEdge
from flowcat_ft.transports.edge import LoopEdge
from flowcat_ft.transports.pacer import FRAME_SECS, Playout, Ticker
from flowcat_ft.transports.session import MediaOptions

if TYPE_CHECKING:
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.runtime import Runtime

logger = logging.getLogger("flowcat_ft.audiosocket")

#: How long a connection we hung up waits for the peer to close its side.
LINGER_SECS = 5.0

__all__ = ["AudioSocketServer", "AudioSocketSession"]


class AudioSocketSession(CallEdge, asyncio.Protocol):
    """One AudioSocket connection: one call."""

    wire_codec = "pcm16"
    wire_rate = SAMPLE_RATE

    def __init__(
        self, server: AudioSocketServer, io: EventLoopThread, ticker: Ticker, edge: LoopEdge
    ) -> None:
        super().__init__(server.runtime, server.pipeline, io, edge, server.options)
        self.server = server
        self._ticker = ticker
        self._parser = AudioSocketParser()
        self._transport: asyncio.Transport | None = None
        self._playout = Playout(self._send, ticker, server.options.lead, server.options.max_buffer)
        self.end_reason = ""
        self._tasks: set[asyncio.Task] = set()
        self._last_input = 0.0
        self.peer = ""

    def log_context(self, **fields: object) -> dict[str, object]:
        return super().log_context(carrier="audiosocket", peer=self.peer) | fields

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._last_input = self._loop.time()
        self._ticker.every_second(self._check_idle)
        self.server._opened(self)

    def data_received(self, data: bytes) -> None:
        if self.end_reason:
            return
        self._last_input = self._loop.time()
        try:
            events = self._parser.feed(data)
        except AudioSocketError as error:
            logger.warning("closing: %s", error, extra=self.log_context())
            self._end(str(error))
            return
        for event in events:
            if isinstance(event, AudioIn):
                self._audio_in(event.payload)
            elif isinstance(event, StreamStarted):
                self._start(event)
            elif isinstance(event, DtmfIn):
                self.call.push(InputDTMFFrame(event.digit))
            elif isinstance(event, StreamStopped):
                self._end(event.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ticker.discard(self._playout, self._check_idle)
        self._playout.stop()  # it lets go of our _send: no cycle left for the collector
        if self.call is not None and not self.call.done:
            self.call.cancel(self.end_reason or "connection closed")
        self.server._closed(self)
        if self.call is not None:
            logger.info(
                "call ended: %s", self.end_reason or "connection closed", extra=self.log_context()
            )

    def _start(self, event: StreamStarted) -> None:
        try:
            self._open_call(SAMPLE_RATE, {"carrier": "audiosocket", "call_id": event.call_id})
        except RuntimeFullError:
            logger.warning("refused a call: the server is full", extra=self.log_context())
            self._end("the server is full")
            return
        logger.info("call started", extra=self.log_context(carrier_call_id=event.call_id))

    def _audio_in(self, payload: bytes) -> None:
        self.frames_in += 1
        try:
            self._add_audio(payload, SAMPLE_RATE, "pcm16")
        except ProtocolError as error:
            self._end(str(error))

    def _check_idle(self, now: float) -> None:
        if now - self._last_input > self.options.idle_timeout and not self.end_reason:
            self._end(f"idle for {self.options.idle_timeout:g} s")

    def _end(self, reason: str) -> None:
        """Send a hangup (unless the peer hung up) and close.

        Our own hangup half-closes: audio the peer sends meanwhile is read and dropped until
        it closes its side (or :data:`LINGER_SECS` pass). Closing a socket with unread data
        makes the kernel send a reset, which can destroy the hangup before the peer reads it.
        """
        if self.end_reason or self._transport is None:
            return
        self.end_reason = reason
        if reason == "hangup":
            self._transport.close()
            return
        self._transport.write(message(HANGUP))
        self._transport.write_eof()
        self._loop.call_later(LINGER_SECS, self._transport.close)

    def eof_received(self) -> bool:
        """The peer closed its side: close ours (returning False lets asyncio do it)."""
        return False

    def _send(self, data: str | bytes) -> None:
        if self._transport is not None and not self.end_reason:
            self._transport.write(data)

    # -- the agent's output (CallEdge's hooks) ---------------------------------------------

    def _play(self, data: bytes) -> None:
        for chunk in self._chunks(data, FRAME_SECS):
            self._playout.play(message(AUDIO, chunk), FRAME_SECS)

    def _clear(self) -> None:
        self._playout.clear()

    def _pause(self) -> None:
        self._playout.pause(take_back=False)  # AudioSocket cannot clear: what was sent plays

    def _resume(self) -> None:
        self._playout.resume()

    def _call_ended(self, frame: Frame) -> None:
        if type(frame) is not EndFrame:
            self._end(frame.reason)
            return

        async def after_playout() -> None:
            while self._playout.queued and not self.end_reason:
                await asyncio.sleep(FRAME_SECS)
            self._end("the agent ended the call")

        task = self._loop.create_task(after_playout())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class AudioSocketServer:
    """Serves AudioSocket connections from Asterisk, one call each::

        server = AudioSocketServer(runtime, pipeline, port=9092).start()
        ...
        server.stop()

    ``loops``: event-loop threads to share (not stopped here) or how many to start.

    Threading contract: the sessions are added and removed by the loops' threads, under
    ``_lock``, and read under it from any thread (:attr:`sessions`); :meth:`start` and
    :meth:`stop` run on one thread, which alone writes ``port`` and ``_servers``.
    """

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline,
        *,
        host: str = "127.0.0.1",
        port: int = 9092,
        options: MediaOptions | None = None,
        loops: int | list[EventLoopThread] = 1,
    ) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.host = host
        self.port = port
        self.options = options or MediaOptions()
        self._loops = EventLoops("flowcat-audiosocket", loops)
        self._servers: list[asyncio.Server] = []
        self._lock = threading.Lock()
        self._active: set[AudioSocketSession] = set()

    @property
    def sessions(self) -> list[AudioSocketSession]:
        with self._lock:
            return list(self._active)

    def start(self) -> AudioSocketServer:
        """Listen on every loop. ``OSError`` if the port is taken."""
        self.runtime.start()
        try:
            for io in self._loops.start():
                server = io.submit(self._listen(io)).result(10)
                self._servers.append(server)
                self.port = server.sockets[0].getsockname()[1]
        except OSError:
            self.stop(grace=0)
            raise
        logger.info("AudioSocket listening on %s:%d", self.host, self.port)
        return self

    async def _listen(self, io: EventLoopThread) -> asyncio.Server:
        ticker, edge = Ticker(io.loop), LoopEdge(io, self.runtime.pool)
        return await io.loop.create_server(
            lambda: AudioSocketSession(self, io, ticker, edge),
            self.host,
            self.port,
            reuse_port=True,
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; give calls ``grace`` seconds, then hang up the rest."""
        for io, server in zip(self._loops, self._servers, strict=False):
            io.loop.call_soon_threadsafe(server.close)
        self._wait_for_calls(grace)
        for session in self.sessions:
            session.io.loop.call_soon_threadsafe(session._end, "the server is shutting down")
        self._wait_for_calls(2.0)
        self._loops.stop()
        self._servers.clear()

    def _wait_for_calls(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.sessions and time.monotonic() < deadline:
            time.sleep(0.05)

    def _opened(self, session: AudioSocketSession) -> None:
        with self._lock:
            self._active.add(session)

    def _closed(self, session: AudioSocketSession) -> None:
        with self._lock:
            self._active.discard(session)
