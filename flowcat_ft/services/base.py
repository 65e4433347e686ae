"""The base of every service stage: a processor whose work runs as coroutines.

A service's network I/O (or a worker process's pipe) runs on one of the runtime's
event-loop threads, never on the stage thread; what it produces comes back to the stage
thread through :meth:`~flowcat_ft.processor.FrameProcessor.call_soon` and flows on through
the rings like any other frame. An interruption (or the call's end) cancels the work in
flight, and anything it still produces afterwards is dropped: each piece of work belongs to
a *generation*, and an interruption starts a new one.

A service that sets :attr:`AsyncService.drain_on_end` finishes what it was given before
the call ends, as pipecat processes an ``EndFrame`` in order after the work queued before
it: the :class:`~flowcat_ft.frames.EndFrame` waits in the service until its work in flight
is done (a TTS says the reply it already received), then goes on. A
:class:`~flowcat_ft.frames.CancelFrame` still drops everything at once.

In a traced call (:mod:`flowcat_ft.telemetry.tracing`), a service whose class names its
``trace_kind`` makes a span per job: from :meth:`AsyncService.start_work` to the job's end,
with its time to first byte, what :meth:`AsyncService.annotate` adds, an ``interruption``
event if one cuts it off, and the error that fails it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from typing import Any

from flowcat_ft.frames import (
    CancelFrame,
    Direction,
    EndFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
)
from flowcat_ft.metrics import Histogram
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.telemetry.tracing import CallTrace, JobSpan

__all__ = ["AsyncService", "call_later", "current_job"]

logger = logging.getLogger("flowcat_ft.services")


def call_later(
    processor: FrameProcessor, delay: float, callback: Callable[..., object], *args: object
) -> Callable[[], None]:
    """Run ``callback(*args)`` on ``processor``'s stage thread after ``delay`` seconds.

    Returns a function that cancels the timer (call it from the stage thread; a timer
    already due may still run, so callbacks check their own state). The timer runs on one
    of the runtime's event loops; it is dropped if the call has ended by then.
    """
    loop = processor.event_loop.loop
    handle: list[asyncio.TimerHandle] = []
    cancelled = False

    def arm() -> None:
        if not cancelled:
            handle.append(loop.call_later(delay, fire))

    def fire() -> None:
        if not cancelled:
            processor.call_soon(run)

    def run() -> None:
        if not cancelled:
            callback(*args)

    def cancel() -> None:
        nonlocal cancelled
        cancelled = True
        if handle:
            loop.call_soon_threadsafe(handle[0].cancel)

    loop.call_soon_threadsafe(arm)
    return cancel


class _Job:
    """One piece of work started with :meth:`AsyncService.start_work`, for its TTFB:
    ``started_ns`` is written when it starts, ``measured`` when its first frame is pushed,
    both on the stage thread. ``span``: its span, in a traced call (else None), ended
    when the coroutine ends (``running`` is set on the loop as it starts), or, if it was
    cancelled before it ever ran, when its future is."""

    __slots__ = ("measured", "running", "span", "started_ns")

    def __init__(self, span: JobSpan | None) -> None:
        self.started_ns = time.perf_counter_ns()
        self.measured = False
        self.running = False
        self.span = span


_current_job: contextvars.ContextVar[_Job | None] = contextvars.ContextVar(
    "flowcat_ft_service_job", default=None
)
"""The job whose coroutine is running (each job runs as a task of its own, so each sees
its own value; tasks it starts inherit it)."""


def current_job() -> JobSpan | None:
    """The span of the job whose coroutine is running, in a traced call (else None)."""
    job = _current_job.get()
    return job.span if job is not None else None


class AsyncService(FrameProcessor):
    """A processor that starts coroutines with :meth:`start_work` and emits their results
    with :meth:`emit`.

    ``ttfb`` measures each job separately: the time from its :meth:`start_work` to the
    first frame it emitted (jobs that overlap each count; frames emitted from elsewhere,
    such as a connection's receive loop, count for none).

    With ``drain_on_end`` (a class attribute), an :class:`~flowcat_ft.frames.EndFrame`
    first calls :meth:`drain` (finish what was received: flush buffered text), then waits
    until :meth:`has_pending_work` is false before :meth:`on_end` runs and the frame goes
    on. An interruption meanwhile cancels the work and lets it go at once; if the work
    takes longer than ``end_timeout`` seconds, it is cancelled with an error frame.

    ``trace_kind`` (``"stt"``, ``"llm"``, ``"tts"``; None: no spans) names the span each
    job makes in a traced call.

    Threading contract: ``_generation``, ``_tasks``, ``_held_end``, ``_end_timer`` and
    ``trace`` are written on the stage thread only (:meth:`start_work`, the hooks,
    callbacks that come back through :meth:`call_soon`); coroutines read ``_generation``
    only through the value they were started with, and hand results back with
    :meth:`emit`, which is safe from any thread. ``ttfb`` is written on the stage thread;
    a job's span ends on the event loop when its coroutine does (spans are thread-safe).
    """

    drain_on_end = False
    end_timeout: float = 30.0
    trace_kind: str | None = None

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self._generation = 0
        self._tasks: dict[Future, _Job] = {}
        self._held_end: Frame | None = None
        self._end_timer: Callable[[], None] | None = None
        self.ttfb = Histogram()
        self.trace: CallTrace | None = None
        """The call's trace (None: the call is not traced)."""

    # -- starting and stopping work ------------------------------------------------------

    def start_work(self, work: Callable[[int], Awaitable[Any]]) -> None:
        """Run ``work(generation)`` on an event loop (call on the stage thread).

        ``work`` passes its generation to :meth:`emit`. If it raises, an error frame goes
        upstream (not fatal: the service decides whether the call can go on).
        """
        job = _Job(self.job_span())
        future = self.event_loop.submit(self._guard(work, self._generation, job))
        self._tasks[future] = job
        if job.span is not None:  # a coroutine cancelled before it ran ends no span itself
            future.add_done_callback(lambda f: None if job.running else job.span.end())
        future.add_done_callback(lambda f: self.call_soon(self._work_done, f))

    def job_span(self, **attributes: Any) -> JobSpan | None:
        """A span for a job of this service, in a traced call (else None)."""
        if self.trace is None or self.trace_kind is None:
            return None
        return self.trace.job(self.trace_kind, self.name, attributes)

    def annotate(self, **attributes: Any) -> None:
        """Add attributes to the span of the job whose coroutine calls this (if traced)."""
        span = current_job()
        if span is not None:
            span.annotate(attributes)

    async def _guard(
        self, work: Callable[[int], Awaitable[Any]], generation: int, job: _Job
    ) -> None:
        _current_job.set(job)
        job.running = True
        try:
            await work(generation)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning("%s: %s: %s", self.name, type(error).__name__, error)
            message = f"{type(error).__name__}: {error}"
            if job.span is not None:
                job.span.fail(message)
            self.call_soon(self._report, generation, message)
        finally:
            if job.span is not None:
                job.span.end()

    def _report(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self.push_error(f"{self.name}: {message}")

    def _work_done(self, future: Future) -> None:
        self._tasks.pop(future, None)
        self._release_end()

    def cancel_work(self) -> None:
        """Cancel everything in flight and drop whatever it still emits."""
        self._generation += 1
        for future in list(self._tasks):
            future.cancel()

    # -- results --------------------------------------------------------------------------

    def emit(
        self, generation: int, frame: Frame, direction: Direction = Direction.DOWNSTREAM
    ) -> None:
        """Push ``frame`` from a coroutine (any thread), unless its work was cancelled."""
        job = _current_job.get()
        if job is not None and job.span is not None:
            job.span.first_byte()
        self.call_soon(self._emit, generation, frame, direction, job)

    def emit_many(self, generation: int, frames: Iterable[Frame]) -> None:
        """Push ``frames`` downstream, in order, as :meth:`emit` does (one hand-off)."""
        job = _current_job.get()
        if job is not None and job.span is not None:
            job.span.first_byte()
        self.call_soon(self._emit_many, generation, list(frames), job)

    def _emit_many(self, generation: int, frames: list[Frame], job: _Job | None) -> None:
        for frame in frames:
            self._emit(generation, frame, Direction.DOWNSTREAM, job)

    def _emit(self, generation: int, frame: Frame, direction: Direction, job: _Job | None) -> None:
        if generation != self._generation:
            return  # produced by work an interruption cancelled
        if job is not None and not job.measured:
            job.measured = True
            self.ttfb.add(time.perf_counter_ns() - job.started_ns)
        self.push(frame, direction)

    # -- the end of the call -----------------------------------------------------------------

    def drain(self) -> None:
        """An EndFrame arrived (with ``drain_on_end``): start the work for whatever was
        received but not yet acted on."""

    def has_pending_work(self) -> bool:
        """Whether work that an EndFrame should wait for is still in flight."""
        return bool(self._tasks)

    def _lifecycle(self, frame: Frame, direction: Direction) -> None:
        """The runtime's lifecycle dispatch, holding the EndFrame while the work drains."""
        kind = type(frame)
        if kind is StartFrame:
            self.trace = CallTrace.of(frame)
        elif kind is EndFrame and direction is Direction.DOWNSTREAM and self.drain_on_end:
            self.drain()
            if self.has_pending_work():
                self._held_end = frame
                self._end_timer = call_later(self, self.end_timeout, self._end_timed_out)
                return
        if kind is CancelFrame:
            self._stop_waiting()
        super()._lifecycle(frame, direction)
        if kind is InterruptionFrame:
            self._release_end()

    def _release_end(self) -> None:
        """Let a held EndFrame go on once the work it waits for is done."""
        if self._held_end is not None and not self.has_pending_work():
            frame = self._stop_waiting()
            super()._lifecycle(frame, Direction.DOWNSTREAM)

    def _stop_waiting(self) -> Frame | None:
        frame, self._held_end = self._held_end, None
        cancel, self._end_timer = self._end_timer, None
        if cancel is not None:
            cancel()
        return frame

    def _end_timed_out(self) -> None:
        if self._held_end is None:
            return
        self.push_error(f"{self.name}: work still running {self.end_timeout:g} s after the end")
        self.cancel_work()
        frame = self._stop_waiting()
        super()._lifecycle(frame, Direction.DOWNSTREAM)

    # -- hooks --------------------------------------------------------------------------------

    def on_interruption(self) -> None:
        for job in self._tasks.values():
            if job.span is not None:
                job.span.interrupted()
        self.cancel_work()

    def on_cancel(self) -> None:
        self.cancel_work()
