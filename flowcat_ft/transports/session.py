"""A media session: one WebSocket connection carrying one call's audio.

The session runs on its connection's event loop. Incoming messages go through the
carrier's serializer (:mod:`flowcat_ft.serializers`, Sans-I/O) to become frames: audio is
decoded from G.711 into a slab at the edge, the one copy on the way in, together with the
audio of every connection on the loop that came in the same loop turn
(:mod:`flowcat_ft.transports.edge`). Outgoing frames
arrive from the stage threads through the loop's bridge in batches; audio is encoded,
cut into 20 ms frames and paced (:mod:`flowcat_ft.transports.pacer`); other frames
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
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from websockets.protocol import State

from flowcat_ft.audio import g711
from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.frames import (
    AudioRawFrame,
    CancelFrame,
    Direction,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSStoppedFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.serializers import (
    AudioIn,
    DtmfIn,
    MarkPlayed,
    ProtocolError,
    Serializer,
    StreamStarted,
    StreamStopped,
)
from flowcat_ft.slabs import PoolExhaustedError
from flowcat_ft.transports.edge import LoopEdge
from flowcat_ft.transports.pacer import FRAME_SECS, Playout, Ticker

if TYPE_CHECKING:
    from flowcat_ft.call import Call
    from flowcat_ft.loops import EventLoopThread
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.runtime import Runtime
    from flowcat_ft.transports.connection import MediaClientConnection, MediaConnection

logger = logging.getLogger("flowcat_ft.transports")


class Turn(NamedTuple):
    """One answered turn: when (wall clock, s), and the response latency: from the user's
    end of speech (the :class:`UserStoppedSpeakingFrame`'s pts) to the first bot audio
    reaching the transport, in ms."""

    at: float
    latency_ms: float


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


class MediaSession:
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
        turn_log: deque[Turn] | None = None,
        check_start: Callable[[StreamStarted], str | None] | None = None,
    ) -> None:
        self.ws = ws
        self.serializer = serializer
        self.runtime = runtime
        self.pipeline = pipeline
        self.io = io
        self.options = options
        self.call: Call | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._ticker = ticker
        self._edge = edge
        self._loop = io.loop
        self._outbox: deque[str | bytes] = deque()
        self._flush_pending = False
        self._playout = Playout(self._send, ticker, options.lead, options.max_buffer)
        self.opened_at = self._last_input = self._loop.time()
        self._tokens = float(options.flood_burst)
        self._tokens_at = self._last_input
        self._carry = bytearray()  # outgoing wire bytes short of a whole 20 ms frame
        # G.711 output of one slab's worth of PCM16 samples, reused frame after frame.
        self._encoded = np.empty(runtime.pool.slab_bytes // 2, dtype=np.uint8)
        self._resample_in: StreamingResampler | None = None
        self._resample_out: StreamingResampler | None = None
        self._ending = False
        self._tasks: set[asyncio.Task] = set()
        self.frames_in = 0
        self.dropped_in = 0
        self.frames_out = 0
        self._marks = 0  # marks made, to name them
        self.marks_played = 0
        self.clears = 0
        # Response latency per turn: the last few here, every call's in the server's log.
        self.turns: deque[Turn] = deque(maxlen=20)
        self._turn_log = turn_log
        self._check_start = check_start  # a reason to refuse the stream's start, or None
        self._user_stopped_ns = 0  # pts of the user's last end of speech, until answered

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
        """The ``extra`` for a log line about this session (see flowcat_ft.server.logs)."""
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
        rate = self.options.sample_rate or event.sample_rate
        if rate != event.sample_rate:
            self._resample_in = StreamingResampler(event.sample_rate, rate)
            self._resample_out = StreamingResampler(rate, event.sample_rate)
        metadata = {
            "carrier": self.serializer.name,
            "call_id": event.call_id,
            "stream_id": event.stream_id,
            **event.metadata,
        }
        start = StartFrame(rate, rate, metadata)
        self.call = self.runtime.open_call(
            self.pipeline, self._from_stage_thread, start_frame=start
        )
        logger.info("call started", extra=self.log_context())

    def _audio_in(self, payload: bytes) -> None:
        if self.call is None:
            return  # the serializer refuses audio before start where the carrier sends one
        self.frames_in += 1
        if self._flooding():
            return
        serializer = self.serializer
        try:
            self._edge.add_audio(
                self._admit,
                payload,
                serializer.sample_rate,
                serializer.codec,
                self.options.decode_input,
            )
        except PoolExhaustedError:
            self.dropped_in += 1
        except ProtocolError as error:
            self._close_soon(error.close_code, str(error))

    def _admit(self, frame: InputAudioRawFrame) -> None:
        """A frame of the caller's audio, made at the end of the loop turn it came in."""
        if self._resample_in is not None:
            try:
                frame = self._resample(frame, self._resample_in, InputAudioRawFrame)
            except PoolExhaustedError:
                self.dropped_in += 1
                return
        # Handed to the stage thread at the end of this loop turn, with the other calls'.
        # Refused if the pipeline is behind (drop rather than block the loop), or if the
        # call is ending (the agent hung up while the caller still streams).
        if not self.io.inbox.push(self.call, frame):
            self.dropped_in += 1

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

    def _resample(
        self, frame: AudioRawFrame, resampler: StreamingResampler, kind: type[AudioRawFrame]
    ) -> AudioRawFrame:
        slab = self.runtime.pool.take()
        n = resampler.process(frame.samples, slab.pcm)
        return kind(slab, n, resampler.out_rate)

    # -- output ----------------------------------------------------------------------------

    def _from_stage_thread(self, frame: Frame, direction: Direction) -> None:
        """The call's on_output: runs on a stage thread, so only hands over to the loop."""
        self.io.bridge.send(self._output, frame, direction)

    def _output(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.UPSTREAM:
            if isinstance(frame, ErrorFrame):
                logger.warning("error: %s", frame.error, extra=self.log_context())
            return
        if isinstance(frame, AudioRawFrame):
            if isinstance(frame, OutputAudioRawFrame):  # not the caller's own audio
                self._audio_out(frame)
            frame.release()  # the audio is on its way out: the slab comes back now
        elif type(frame) is InterruptionFrame:
            self._interrupted()
        elif type(frame) is TTSStoppedFrame:
            self._mark()
        elif type(frame) is UserStoppedSpeakingFrame:
            self._user_stopped_ns = frame.pts
            self._frame_out(frame)
        elif type(frame) in (EndFrame, CancelFrame):
            self._call_ended(frame)
        else:
            self._frame_out(frame)

    def _audio_out(self, frame: AudioRawFrame) -> None:
        if self._user_stopped_ns:
            self._answered()
        serializer = self.serializer
        wire_codec, wire_rate = serializer.codec, serializer.sample_rate
        if frame.codec == "pcm16" and frame.sample_rate != wire_rate:
            if self._resample_out is None or self._resample_out.in_rate != frame.sample_rate:
                self._resample_out = StreamingResampler(frame.sample_rate, wire_rate)
            frame = self._resample(frame, self._resample_out, type(frame))
        if frame.codec == wire_codec:
            data = frame.samples.tobytes()
        elif frame.codec == "pcm16" and wire_codec in g711.ENCODERS:
            samples = frame.samples
            n = g711.ENCODERS[wire_codec](samples, self._encoded)
            data = self._encoded[:n].tobytes()
        else:
            logger.warning(
                "cannot send %s audio on a %s stream",
                frame.codec,
                wire_codec,
                extra=self.log_context(),
            )
            return
        if not self.options.pace_output:
            self._send(serializer.send_audio(data))
            return
        # Whole chunks of the carrier's size (20 ms for most, 100 ms for Exotel).
        seconds = serializer.audio_chunk_ms / 1000
        chunk = int(wire_rate * seconds) * (2 if wire_codec == "pcm16" else 1)
        carry = self._carry
        carry += data
        while len(carry) >= chunk:
            self._playout.play(serializer.send_audio(bytes(carry[:chunk])), seconds)
            del carry[:chunk]

    def _answered(self) -> None:
        """The first bot audio since the user stopped speaking: log the turn's latency."""
        turn = Turn(time.time(), (time.monotonic_ns() - self._user_stopped_ns) / 1e6)
        self._user_stopped_ns = 0
        self.turns.append(turn)
        if self._turn_log is not None:
            self._turn_log.append(turn)
        self._frame_out(MetricsFrame("transport", {"turn_latency_ms": turn.latency_ms}))

    def _frame_out(self, frame: Frame) -> None:
        """Any other frame: the serializer's message for it, if its protocol has one."""
        message = self.serializer.send_frame(frame)
        if message is not None:
            self._send(message)

    def _interrupted(self) -> None:
        self._carry.clear()
        self._playout.clear()
        message = self.serializer.send_clear()
        if message is not None:
            self.clears += 1
            self._send(message)

    def _mark(self) -> None:
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
