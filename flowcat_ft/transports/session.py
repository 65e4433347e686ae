"""A media session: one WebSocket connection carrying one call's audio.

The session runs on its connection's event loop; what it shares with every other wire (RTP,
AudioSocket) is in its base class, :class:`~flowcat_ft.transports.call_edge.CallEdge`.
Incoming messages go through the
carrier's serializer (:mod:`flowcat_ft.serializers`, Sans-I/O) to become frames: audio is
decoded from G.711 into a slab at the edge, the one copy on the way in, together with the
audio of every connection on the loop that came in the same loop turn
(:mod:`flowcat_ft.transports.edge`). Outgoing frames
arrive from the stage threads through the loop's bridge in batches; audio is encoded,
cut into 20 ms frames and paced (:mod:`flowcat_ft.transports.pacer`); an interruption
sends the carrier's ``clear``, and so does a pause, whose resume sends again what the
carrier dropped unplayed; other frames
become the serializer's messages where its protocol has some (``Serializer.send_frame``).

Bad input closes this connection only, with a close code that says why, and a log line:
malformed messages (1007/1008, from the serializer), messages over the size limit (1009,
by the websockets library), a flood of frames faster than real time (1008), a peer that
stops reading what we send (1008), or silence past the idle timeout (1001). The call is
cancelled and its slabs go back to the pool; every other call carries on. A call whose
pipeline fails (a processor raised) is closed with 1011 and no detail: the error is in
the log, not sent to the peer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.protocol import State

from flowcat_ft.frames import EndFrame, Frame, InputDTMFFrame
from flowcat_ft.serializers import (
    AudioIn,
    DtmfIn,
    MarkPlayed,
    ProtocolError,
    Serializer,
    StreamStarted,
    StreamStopped,
)
from flowcat_ft.transports.call_edge import CallEdge, Turn, TurnLog
from flowcat_ft.transports.edge import LoopEdge
from flowcat_ft.transports.pacer import FRAME_SECS, Playout, Ticker

if TYPE_CHECKING:
    from flowcat_ft.loops import EventLoopThread
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.runtime import Runtime
    from flowcat_ft.transports.connection import MediaClientConnection, MediaConnection

__all__ = ["MediaOptions", "MediaSession", "Turn"]

logger = logging.getLogger("flowcat_ft.transports")


@dataclass(frozen=True)
class MediaOptions:
    """How media sessions behave; shared by every connection of a server or client.

    ``sample_rate``: the rate the pipeline works at (None: the carrier's wire rate; else
    audio is resampled at the edge). ``decode_input``: decode G.711 into PCM16 at the edge
    (False hands the pipeline the wire codec, as the echo benchmark's pipeline wants).
    ``pace_output``: send audio at real time (False sends each frame as it comes).
    ``max_frames_per_second`` and ``flood_burst``: the flood limit (see ``_flooding``);
    ``max_unsent_bytes``: how much may wait for a peer that does not read.
    """

    sample_rate: int | None = None
    decode_input: bool = True
    pace_output: bool = True
    lead: float = 0.08
    max_buffer: float = 20.0
    idle_timeout: float = 30.0
    max_frames_per_second: int = 100
    flood_burst: int = 300
    max_unsent_bytes: int = 256 * 1024


class MediaSession(CallEdge):
    """One connection ↔ one call. Everything here runs on the connection's event loop."""

    def __init__(
        self,
        ws: MediaConnection | MediaClientConnection,
        serializer: Serializer,
        runtime: Runtime,
        pipeline: Pipeline,
        io: EventLoopThread,
        ticker: Ticker,
        edge: LoopEdge,
        options: MediaOptions,
        turn_log: TurnLog | None = None,
        check_start: Callable[[StreamStarted], str | None] | None = None,
    ) -> None:
        super().__init__(runtime, pipeline, io, edge, options, turn_log)
        self.ws = ws
        self.serializer = serializer
        self.close_code: int | None = None
        self.close_reason = ""
        self._ticker = ticker
        self._outbox: deque[str | bytes] = deque()
        self._flush_pending = False
        self._playout = Playout(self._send, ticker, options.lead, options.max_buffer)
        self.opened_at = self._last_input = self._loop.time()
        self._tokens = float(options.flood_burst)
        self._tokens_at = self._last_input
        self._ending = False
        self._tasks: set[asyncio.Task] = set()
        self.frames_out = 0
        self._marks = 0  # marks made, to name them
        self.marks_played = 0
        self.clears = 0
        self._check_start = check_start  # a reason to refuse the stream's start, or None

    @property
    def wire_codec(self) -> str | None:
        return self.serializer.codec

    @property
    def wire_rate(self) -> int | None:
        return self.serializer.sample_rate

    @property
    def marks_sent(self) -> int:
        """Marks sent to the peer, or queued behind audio still to be sent; those an
        interruption dropped from the pacer (never to be sent) do not count."""
        return self._marks - self._playout.marks_dropped

    # -- the connection's life -------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes, then end the call."""
        self._ticker.every_second(self._check_idle)
        try:
            self.ws.take_messages(self._receive)
            await self.ws.wait_closed()
        finally:
            self._ticker.discard(self._playout, self._check_idle)
            self._playout.stop()
            if self.call is not None and not self.call.done:
                self.call.cancel(self.close_reason or "connection closed")
            if self.close_code is None:
                self.close_code = self.ws.close_code
            if self.call is not None:
                logger.info(
                    "call ended: %s after %.1f s, %d frames in, %d out",
                    self.close_reason or "connection closed",
                    self._loop.time() - self.opened_at,
                    self.frames_in,
                    self.frames_out,
                    extra=self.log_context(close_code=self.close_code),
                )

    async def _close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            if code not in (1000, 1001):
                logger.warning("closing: %s", reason, extra=self.log_context(close_code=code))
        await self.ws.close(code, close_reason(reason))

    def _close_soon(self, code: int, reason: str) -> None:
        self._ending = True
        self._spawn(self._close(code, reason))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the session keeps a reference to until it is done."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def log_context(self, **fields: object) -> dict[str, object]:
        context: dict[str, object] = {"peer": _address(self.ws.remote_address)}
        if self.call is not None:
            context["call_id"] = self.call.id
            context["carrier"] = self.serializer.name
            if self.serializer.stream is not None and self.serializer.stream.call_id:
                context["carrier_call_id"] = self.serializer.stream.call_id
        return context | fields

    def _check_idle(self, now: float) -> None:
        if now - self._last_input > self.options.idle_timeout and not self._ending:
            self._close_soon(1001, f"idle for {self.options.idle_timeout:g} s")

    # -- input -----------------------------------------------------------------------------

    def _receive(self, message: str | bytes) -> None:
        """One whole message from the peer, handed over as it is read (see
        :mod:`~flowcat_ft.transports.connection`)."""
        if self._ending:
            return  # closing: the connection reads on, so the closing handshake gets through
        self._last_input = self._loop.time()
        try:
            for event in self.serializer.receive(message):
                self._handle(event)
        except ProtocolError as error:
            self._close_soon(error.close_code, str(error))
        except Exception:
            logger.exception("failed on a message", extra=self.log_context())
            self._close_soon(1011, "internal error")

    def _handle(self, event: object) -> None:
        if isinstance(event, AudioIn):
            self._audio_in(event.payload)
        elif isinstance(event, StreamStarted):
            self._start(event)
        elif isinstance(event, DtmfIn):
            if self.call is not None:
                self.call.push(InputDTMFFrame(event.digit))
        elif isinstance(event, MarkPlayed):
            self.marks_played += 1
        elif isinstance(event, StreamStopped):
            self._close_soon(1000, event.reason or "stream stopped")

    def _start(self, event: StreamStarted) -> None:
        if self.call is not None:
            self._close_soon(1008, "a second start event on one stream")
            return
        if self._check_start is not None and (refusal := self._check_start(event)):
            self._close_soon(1008, refusal)
            return
        metadata = {
            "carrier": self.serializer.name,
            "call_id": event.call_id,
            "stream_id": event.stream_id,
            **event.metadata,
        }
        self._open_call(event.sample_rate, metadata)
        logger.info("call started", extra=self.log_context())

    def _audio_in(self, payload: bytes) -> None:
        if self.call is None:
            return  # the serializer refuses audio before start where the carrier sends one
        self.frames_in += 1
        if self._flooding():
            return
        try:
            self._add_audio(payload, self.serializer.sample_rate, self.serializer.codec)
        except ProtocolError as error:
            self._close_soon(error.close_code, str(error))

    def _flooding(self) -> bool:
        """A token bucket: frames may come at up to ``max_frames_per_second`` on average,
        with bursts of up to ``flood_burst`` frames (what a client that paces correctly
        sends at once after a stall of the network or of this server)."""
        options = self.options
        now = self._last_input
        self._tokens = min(
            options.flood_burst,
            self._tokens + (now - self._tokens_at) * options.max_frames_per_second,
        )
        self._tokens_at = now
        self._tokens -= 1
        if self._tokens < 0 and not self._ending:
            self._close_soon(1008, f"flood: over {options.max_frames_per_second} frames/s")
            return True
        return False

    # -- output ----------------------------------------------------------------------------

    def _play(self, data: bytes) -> None:
        serializer = self.serializer
        if not self.options.pace_output:
            self._send(serializer.send_audio(data))
            return
        # Whole chunks of the carrier's size (20 ms for most, 100 ms for Exotel).
        seconds = serializer.audio_chunk_ms / 1000
        for chunk in self._chunks(data, seconds):
            self._playout.play(serializer.send_audio(chunk), seconds)

    def _frame_out(self, frame: Frame) -> None:
        """Any other frame: the serializer's message for it, if its protocol has one."""
        message = self.serializer.send_frame(frame)
        if message is not None:
            self._send(message)

    def _clear(self) -> None:
        self._playout.clear()
        message = self.serializer.send_clear()
        if message is not None:
            self.clears += 1
            self._send(message)

    def _pause(self) -> None:
        """Take back what the carrier holds and has not played, with a ``clear`` (where
        its protocol has none, what was sent plays), and hold what comes next. Without
        pacing (``pace_output``) audio goes out as it comes, and a pause changes nothing."""
        clear = self.serializer.send_clear()
        self._playout.pause(take_back=clear is not None)
        if clear is not None and self.options.pace_output:
            self._send(clear)

    def _resume(self) -> None:
        self._playout.resume()

    def _tts_stopped(self) -> None:
        message = self.serializer.send_mark(f"utterance-{self._marks + 1}")
        if message is None:
            return
        self._marks += 1
        if self.options.pace_output:
            self._playout.play(message, duration=0.0)  # after the audio queued before it
        else:
            self._send(message)

    def _call_ended(self, frame: Frame) -> None:
        """The agent ended the call (or it was cancelled): close once queued audio is out."""
        if self._ending or self.close_code is not None:
            return
        self._ending = True
        code, reason = 1000, "call ended" if type(frame) is EndFrame else frame.reason
        if self.call is not None and self.call.failed:
            # The error is in the log; the peer learns only that the agent failed.
            code, reason = 1011, "the agent failed"

        async def close_after_playout() -> None:
            while self._playout.queued and type(frame) is EndFrame:
                await asyncio.sleep(FRAME_SECS)
            await self._close(code, reason)

        self._spawn(close_after_playout())

    # -- sending ---------------------------------------------------------------------------

    def _send(self, message: str | bytes) -> None:
        """Queue ``message``; everything queued in one loop turn is written at once, in the
        loop's one pass over the connections that have something to write."""
        self._outbox.append(message)
        self.frames_out += 1
        if not self._flush_pending:
            self._flush_pending = True
            self._edge.write_soon(self._flush)

    def _flush(self) -> None:
        """Write the queued messages through the connection's Sans-I/O protocol object.

        An ``await ws.send()`` per frame costs more than the frame's whole trip through the
        pipeline (see shared/ENVIRONMENT.md); this does what websockets' ``send()`` does
        inside its send context (frame the message with ``ws.protocol``, then
        ``ws.send_data()`` writes the bytes) for a whole batch, with one transport write.
        Flow control: a peer that lets more than ``max_unsent_bytes`` pile up in the
        transport is not reading, and is closed.
        """
        self._flush_pending = False
        outbox, ws = self._outbox, self.ws
        protocol = ws.protocol
        if protocol.state is not State.OPEN:
            outbox.clear()
            return
        while outbox:
            message = outbox.popleft()
            if type(message) is str:
                protocol.send_text(message.encode())
            else:
                protocol.send_binary(message)
        ws.send_data()
        unsent = ws.transport.get_write_buffer_size()
        if unsent > self.options.max_unsent_bytes and self.close_code is None:
            # A closing handshake would queue behind what the peer is not reading: drop
            # the connection at once (the close code is recorded, not delivered).
            self._ending = True
            self.close_code, self.close_reason = 1008, f"peer is not reading ({unsent} bytes)"
            logger.warning(
                "closing: %s", self.close_reason, extra=self.log_context(close_code=1008)
            )
            outbox.clear()
            ws.transport.abort()


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame's reason (123 bytes of UTF-8)."""
    return text.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore")


_MAX_CLOSE_REASON = 123


def _address(address: object) -> str:
    """``host:port`` of a peer's socket address."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
