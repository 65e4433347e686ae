"""One call's media where it meets the runtime, whatever carries it.

A :class:`CallEdge` is the part of a media session that does not depend on the wire: it
opens the call on the pipeline, turns the wire's audio into input frames (decoded from
G.711 at the loop's :class:`~flowcat_ft.transports.edge.LoopEdge`, with every other
call's audio of the same loop turn, resampled to the pipeline's rate where it differs)
and the pipeline's output back into wire audio (resampled, G.711-encoded), and logs each
turn's response latency. What carries the audio subclasses it: a WebSocket media stream
(:class:`~flowcat_ft.transports.session.MediaSession`), RTP
(:class:`~flowcat_ft.transports.sip.media.RtpSession`).

A subclass says what its wire carries (:attr:`wire_codec`, :attr:`wire_rate`) and
implements the hooks: :meth:`_play` (agent audio, in the wire's codec and rate),
:meth:`_clear` (an interruption: drop the audio not yet played), :meth:`_pause` and
:meth:`_resume` (the caller may be cutting in: stop playing, keep the audio, play it on),
:meth:`_tts_stopped`, :meth:`_frame_out` (any other frame leaving the pipeline) and
:meth:`_call_ended`.

Threading contract: everything runs on the call's event loop (``io``), except
:meth:`_from_stage_thread`, the call's ``on_output``, which runs on a stage thread and
only hands the frame over to the loop's bridge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

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
    InterruptionFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    PauseOutputFrame,
    ResumeOutputFrame,
    StartFrame,
    TTSStoppedFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.slabs import PoolExhaustedError

if TYPE_CHECKING:
    from flowcat_ft.call import Call
    from flowcat_ft.loops import EventLoopThread
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.runtime import Runtime
    from flowcat_ft.transports.edge import LoopEdge
    from flowcat_ft.transports.session import MediaOptions

logger = logging.getLogger("flowcat_ft.transports")


class Turn(NamedTuple):
    """One answered turn: when (wall clock, s), and the response latency: from the user's
    end of speech (the :class:`UserStoppedSpeakingFrame`'s pts) to the first bot audio
    reaching the transport, in ms."""

    at: float
    latency_ms: float


class TurnLog:
    """The newest ``size`` answered turns, oldest first.

    Threading contract: event-loop threads append (a server's log is shared by all its
    loops), any thread reads :meth:`recent`. A lock guards the deque, because on 3.13t
    copying a deque while another thread appends to it raises "deque mutated during
    iteration". A turn is logged once per answer, so the lock is never hot.
    """

    def __init__(self, size: int) -> None:
        self._turns: deque[Turn] = deque(maxlen=size)
        self._lock = threading.Lock()

    def append(self, turn: Turn) -> None:
        with self._lock:
            self._turns.append(turn)

    def recent(self) -> list[Turn]:
        """A copy of the turns logged, oldest first."""
        with self._lock:
            return list(self._turns)

    def __len__(self) -> int:
        return len(self._turns)


class CallEdge:
    """One call's audio between a wire and the runtime (see the module docstring)."""

    wire_codec: str | None
    wire_rate: int | None

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline,
        io: EventLoopThread,
        edge: LoopEdge,
        options: MediaOptions,
        turn_log: TurnLog | None = None,
    ) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.io = io
        self.options = options
        self.call: Call | None = None
        self.pipeline_rate = 0  # the call's sample rate in the pipeline, once open
        self._edge = edge
        self._loop = io.loop
        self._carry = bytearray()  # outgoing wire bytes short of a whole chunk
        # G.711 output of one slab's worth of PCM16 samples, reused frame after frame.
        self._encoded = np.empty(runtime.pool.slab_bytes // 2, dtype=np.uint8)
        self._resample_in: StreamingResampler | None = None
        self._resample_out: StreamingResampler | None = None
        self.frames_in = 0
        self.dropped_in = 0
        # Response latency per turn: the last few here, every call's in the server's log.
        self.turns = TurnLog(20)
        self._turn_log = turn_log
        self._user_stopped_ns = 0  # pts of the user's last end of speech, until answered
        self.paused = False  # between a PauseOutputFrame and its resume or interruption
        # The output's pauses: in all, and those that became an interruption or resumed.
        self.pauses = 0
        self.pauses_interrupted = 0
        self.pauses_resumed = 0

    @property
    def pause_counts(self) -> dict[str, int]:
        """The output's pauses so far (``pauses``), and of those, the ones an interruption
        ended (``interrupted``) and the ones that played on (``resumed``). Written on the
        call's loop; read from another thread, a count may lag by one pause."""
        return {
            "pauses": self.pauses,
            "interrupted": self.pauses_interrupted,
            "resumed": self.pauses_resumed,
        }

    def log_context(self, **fields: object) -> dict[str, object]:
        """The ``extra`` for a log line about this call (see flowcat_ft.server.logs)."""
        context: dict[str, object] = {}
        if self.call is not None:
            context["call_id"] = self.call.id
        return context | fields

    # -- input -----------------------------------------------------------------------------

    def _open_call(self, wire_rate: int, metadata: dict) -> Call:
        """Open the call on the pipeline, at the options' rate (or the wire's)."""
        rate = self.pipeline_rate = self.options.sample_rate or wire_rate
        if rate != wire_rate:
            self._resample_in = StreamingResampler(wire_rate, rate)
            self._resample_out = StreamingResampler(rate, wire_rate)
        start = StartFrame(rate, rate, metadata)
        self.call = self.runtime.open_call(
            self.pipeline, self._from_stage_thread, start_frame=start
        )
        return self.call

    def _wire_rate_changed(self) -> None:
        """The wire's rate may have changed mid-call (a new codec): resample the caller's
        audio from the new one (the agent's is resampled to it as it comes)."""
        wire_rate, rate = self.wire_rate, self.pipeline_rate
        resampler = self._resample_in
        if self.call is None or (resampler.in_rate if resampler else rate) == wire_rate:
            return
        self._resample_in = StreamingResampler(wire_rate, rate) if wire_rate != rate else None
        self._resample_out = None

    def _add_audio(self, payload: bytes, sample_rate: int, codec: str) -> None:
        """Caller audio in the wire codec: a frame at the end of this loop turn.

        Raises :class:`~flowcat_ft.serializers.ProtocolError` for a payload that is not
        whole samples or does not fit a slab; while no slab is free it is dropped."""
        try:
            self._edge.add_audio(
                self._admit, payload, sample_rate, codec, self.options.decode_input
            )
        except PoolExhaustedError:
            self.dropped_in += 1

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
            self._carry.clear()
            if self.paused:
                self.paused = False
                self.pauses_interrupted += 1
            self._clear()
        elif type(frame) is PauseOutputFrame:
            if not self.paused:
                self.paused = True
                self.pauses += 1
                self._pause()
        elif type(frame) is ResumeOutputFrame:
            self._play_on()
        elif type(frame) is TTSStoppedFrame:
            self._tts_stopped()
        elif type(frame) is UserStoppedSpeakingFrame:
            self._user_stopped_ns = frame.pts
            self._frame_out(frame)
        elif type(frame) in (EndFrame, CancelFrame):
            if type(frame) is EndFrame:  # no resume is coming: play out what is paused
                self._play_on()
            self._call_ended(frame)
        else:
            self._frame_out(frame)

    def _play_on(self) -> None:
        """Let paused output play on (a pause counted as resumed)."""
        if self.paused:
            self.paused = False
            self.pauses_resumed += 1
            self._resume()

    def _audio_out(self, frame: AudioRawFrame) -> None:
        if self._user_stopped_ns:
            self._answered()
        wire_codec, wire_rate = self.wire_codec, self.wire_rate
        if frame.codec == "pcm16" and frame.sample_rate != wire_rate:
            if self._resample_out is None or self._resample_out.in_rate != frame.sample_rate:
                self._resample_out = StreamingResampler(frame.sample_rate, wire_rate)
            frame = self._resample(frame, self._resample_out, type(frame))
        if frame.codec == wire_codec:
            data = frame.samples.tobytes()
        elif frame.codec == "pcm16" and wire_codec in g711.ENCODERS:
            n = g711.ENCODERS[wire_codec](frame.samples, self._encoded)
            data = self._encoded[:n].tobytes()
        else:
            logger.warning(
                "cannot send %s audio on a %s stream",
                frame.codec,
                wire_codec,
                extra=self.log_context(),
            )
            return
        self._play(data)

    def _chunks(self, data: bytes, seconds: float) -> Iterator[bytes]:
        """``data`` and the bytes left over before it, in whole chunks of ``seconds`` of
        wire audio (what is left over waits for the next call)."""
        chunk = int(self.wire_rate * seconds) * (2 if self.wire_codec == "pcm16" else 1)
        carry = self._carry
        carry += data
        while len(carry) >= chunk:
            yield bytes(carry[:chunk])
            del carry[:chunk]

    def _answered(self) -> None:
        """The first bot audio since the user stopped speaking: log the turn's latency."""
        turn = Turn(time.time(), (time.monotonic_ns() - self._user_stopped_ns) / 1e6)
        self._user_stopped_ns = 0
        self.turns.append(turn)
        if self._turn_log is not None:
            self._turn_log.append(turn)
        self._frame_out(MetricsFrame("transport", {"turn_latency_ms": turn.latency_ms}))

    # -- what the wire does ----------------------------------------------------------------

    def _play(self, data: bytes) -> None:
        """Agent audio in the wire's codec and rate, to be played to the caller."""
        raise NotImplementedError

    def _clear(self) -> None:
        """An interruption: drop the agent audio not yet played."""
        raise NotImplementedError

    def _pause(self) -> None:
        """The caller may be cutting in: stop playing the agent's audio at once, and keep
        it (what the carrier was sent and has not played, and what comes next), until
        :meth:`_resume` plays it on or :meth:`_clear` drops it."""
        raise NotImplementedError

    def _resume(self) -> None:
        """Play on what :meth:`_pause` kept, from where the caller stopped hearing it."""
        raise NotImplementedError

    def _tts_stopped(self) -> None:
        """The agent finished an utterance (its audio may still be playing)."""

    def _frame_out(self, frame: Frame) -> None:
        """Any other frame leaving the pipeline downstream."""

    def _call_ended(self, frame: Frame) -> None:
        """The agent ended the call (:class:`EndFrame`, once queued audio has played) or
        it was cancelled (:class:`CancelFrame`)."""
        raise NotImplementedError
