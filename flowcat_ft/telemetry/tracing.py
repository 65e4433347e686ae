"""OpenTelemetry traces of conversations: a span per call, per user turn, per service job.

One call's trace::

    call                       call.id, call.carrier, call.carrier_call_id, call.stream_id
    ├── turn                   turn.number, turn.was_interrupted, turn.response_latency_ms;
    │   │                      events: user stopped speaking, bot started speaking, interruption
    │   ├── stt                transcript, metrics.ttfb (end of speech to final transcript)
    │   ├── llm                gen_ai.request.model, gen_ai.usage.input_tokens / output_tokens,
    │   │                      metrics.ttfb (request to first token)
    │   └── tts                metrics.character_count, metrics.ttfb (text to first audio)
    └── llm, tts               the bot's words before any user turn (a greeting)

A job cut off by an interruption gets an ``interruption`` event (and ``job.cancelled``); a
failed one the status ERROR with the error's message. Names follow pipecat's tracing (and
OpenTelemetry's ``gen_ai`` conventions) where it has them.

Who makes which spans:

- :class:`ConversationTracer`, a processor right after the turn detector, opens the call's
  span when the call starts, and follows the turns in the frames that pass it: a turn
  starts when the user does (:class:`~flowcat_ft.frames.UserStartedSpeakingFrame`) and
  ends when the bot has answered it (:class:`~flowcat_ft.frames.BotStoppedSpeakingFrame`,
  which a barge-in also brings), or, unanswered, when the user's next turn starts. Placed
  there, it sees a turn start before any service downstream acts on it.
- The services (:class:`~flowcat_ft.services.base.AsyncService`) make a span per job:
  each piece of work they start, or, for a streaming STT, each utterance.
- The call's :class:`CallTrace` reaches them in the
  :class:`~flowcat_ft.frames.StartFrame`'s ``metadata``, under the key :class:`CallTrace`
  (a class, not a string, so that no carrier's field can collide with it).

A call without a tracer has no :class:`CallTrace`, and its services make no spans: a
``None`` check per job. No span is ever made per audio frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode, Tracer, set_span_in_context

from flowcat_ft.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    Frame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.processor import Batch, FrameProcessor

__all__ = ["CallTrace", "ConversationTracer", "JobSpan"]

_CALL_ATTRIBUTES = {
    "carrier": "call.carrier",
    "call_id": "call.carrier_call_id",
    "stream_id": "call.stream_id",
}
"""StartFrame metadata (what the media session knows of the carrier's call) → attribute."""


class JobSpan:
    """The span of one service job (see the module docstring). Every method is safe from
    any thread (the SDK's spans lock themselves; ``_ended`` is guarded by the call's
    trace's lock); ``end`` may be called more than once."""

    __slots__ = ("_ended", "_trace", "measured", "span", "started_ns")

    def __init__(self, trace: CallTrace, span: Span) -> None:
        self._trace = trace
        self.span = span
        self.started_ns = time.perf_counter_ns()
        self.measured = False  # set by the job's own coroutine
        self._ended = False

    def first_byte(self) -> None:
        """The job produced a result: the first time, its time to first byte (call it from
        the job's coroutine, as each result is handed out)."""
        if not self.measured:
            self.measured = True
            ttfb = (time.perf_counter_ns() - self.started_ns) / 1e9
            self.span.set_attribute("metrics.ttfb", ttfb)

    def annotate(self, attributes: Mapping[str, Any]) -> None:
        self.span.set_attributes(dict(attributes))

    def interrupted(self) -> None:
        self.span.add_event("interruption")
        self.span.set_attribute("job.cancelled", True)

    def fail(self, message: str) -> None:
        self.span.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        if self._trace._job_ending(self):
            self.span.end()
            self._trace._job_ended()


class CallTrace:
    """One call's spans (see the module docstring).

    Threading contract: the turn methods run on the tracer's stage thread, :meth:`job` on
    the services' stage threads and event loops. ``_lock`` guards ``_turn``,
    ``_answering``, ``_turns``, ``_user_stopped_ns``, ``_open_jobs``, ``_ending`` and
    ``_ended``; spans are made and ended outside it (the SDK's spans lock themselves).
    """

    def __init__(self, tracer: Tracer, call_id: int, metadata: Mapping[Any, Any]) -> None:
        attributes: dict[str, Any] = {"call.id": call_id}
        for key, name in _CALL_ATTRIBUTES.items():
            if isinstance(metadata.get(key), str | int) and metadata[key] != "":
                attributes[name] = metadata[key]
        self._tracer = tracer
        self.span = tracer.start_span("call", attributes=attributes)
        self._lock = threading.Lock()
        self._turn: Span | None = None  # the user's latest turn, until it ends
        self._answering: Span | None = None  # the turn the bot is speaking in
        self._turns = 0
        self._user_stopped_ns = 0
        self._open_jobs = 0
        self._ending = False
        self._ended = False

    @staticmethod
    def of(frame: StartFrame) -> CallTrace | None:
        """The trace a call's StartFrame carries, if the call is traced."""
        trace = frame.metadata.get(CallTrace)
        return trace if isinstance(trace, CallTrace) else None

    # -- turns (the tracer's stage thread) -----------------------------------------------------

    def user_started(self) -> None:
        with self._lock:
            self._turns += 1
            number = self._turns
            unanswered = self._turn if self._turn is not self._answering else None
            parent = self.span
        if unanswered is not None:
            unanswered.end()
        turn = self._tracer.start_span(
            "turn",
            context=set_span_in_context(parent),
            attributes={"turn.number": number, "turn.was_interrupted": False},
        )
        with self._lock:
            self._turn = turn

    def user_stopped(self) -> None:
        with self._lock:
            turn = self._turn
            self._user_stopped_ns = time.perf_counter_ns()
        if turn is not None:
            turn.add_event("user stopped speaking")

    def bot_started(self) -> None:
        with self._lock:
            turn = self._answering = self._turn
            stopped, self._user_stopped_ns = self._user_stopped_ns, 0
        if turn is not None:
            turn.add_event("bot started speaking")
            if stopped:
                latency = (time.perf_counter_ns() - stopped) / 1e6
                turn.set_attribute("turn.response_latency_ms", latency)

    def bot_stopped(self) -> None:
        with self._lock:
            turn, self._answering = self._answering, None
            if turn is not None and turn is self._turn:
                self._turn = None
        if turn is not None:
            turn.end()

    def interrupted(self) -> None:
        """An interruption: the turn the bot was answering is cut off."""
        with self._lock:
            turn = self._answering
        if turn is not None:
            turn.add_event("interruption")
            turn.set_attribute("turn.was_interrupted", True)

    # -- jobs (the services' threads) ----------------------------------------------------------

    def job(self, kind: str, service: str, attributes: Mapping[str, Any] | None = None) -> JobSpan:
        """A span for one job of a service (``kind``: ``"stt"``, ``"llm"`` or ``"tts"``),
        in the user's current turn (the call's span outside turns)."""
        with self._lock:
            parent = self._turn or self._answering or self.span
            self._open_jobs += 1
        span = self._tracer.start_span(
            kind,
            context=set_span_in_context(parent),
            attributes={"service.processor": service, **(attributes or {})},
        )
        return JobSpan(self, span)

    def _job_ending(self, job: JobSpan) -> bool:
        """Whether ``job`` is ending now (False if it has ended before)."""
        with self._lock:
            ending, job._ended = not job._ended, True
        return ending

    def _job_ended(self) -> None:
        with self._lock:
            self._open_jobs -= 1
            done = self._done()
        if done:
            self.span.end()

    def _done(self) -> bool:
        """Whether the call's span should end now (call with ``_lock`` held)."""
        if self._ending and self._open_jobs == 0 and not self._ended:
            self._ended = True
            return True
        return False

    # -- the end -------------------------------------------------------------------------------

    def end(self, reason: str) -> None:
        """The call is ending: its turns end now, its span once its jobs have."""
        with self._lock:
            if self._ending:
                return
            self.span.set_attribute("call.end_reason", reason)
            turns = {self._turn, self._answering} - {None}
            self._turn = self._answering = None
            self._ending = True
            done = self._done()
        for turn in turns:
            turn.end()
        if done:
            self.span.end()


_TURN_FRAMES = (
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
)


class ConversationTracer(FrameProcessor):
    """Opens each call's :class:`CallTrace` and follows its turns (see the module
    docstring); place it right after the turn detector. Frames pass unchanged; per frame
    it costs one type check, in a batch kernel."""

    def __init__(self, tracer: Tracer, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.tracer = tracer
        self.trace: CallTrace | None = None

    def on_start(self, frame: StartFrame) -> None:
        self.trace = CallTrace(self.tracer, self.call.id, frame.metadata)
        frame.metadata[CallTrace] = self.trace  # for the processors after this one

    def process(self, frame: Frame, direction: Direction) -> None:
        if type(frame) in _TURN_FRAMES:
            self._follow(frame, direction)
        self.push(frame, direction)

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        for frame in batch.frames:
            if type(frame) in _TURN_FRAMES:
                batch.processor(frame)._follow(frame, batch.direction)
        batch.push(batch.frames)

    def _follow(self, frame: Frame, direction: Direction) -> None:
        trace, kind = self.trace, type(frame)
        if trace is None:
            return
        if direction is Direction.DOWNSTREAM:
            if kind is UserStartedSpeakingFrame:
                trace.user_started()
            elif kind is UserStoppedSpeakingFrame:
                trace.user_stopped()
        elif kind is BotStartedSpeakingFrame:  # from the playout, on its way upstream
            trace.bot_started()
        elif kind is BotStoppedSpeakingFrame:
            trace.bot_stopped()

    def on_interruption(self) -> None:
        if self.trace is not None:
            self.trace.interrupted()

    def on_end(self) -> None:
        if self.trace is not None:
            self.trace.end("ended")

    def on_cancel(self) -> None:
        if self.trace is not None:
            self.trace.end("cancelled")
