"""The base of every service stage: a processor whose work runs as coroutines.

A service's network I/O (or a worker process's pipe) runs on one of the runtime's
event-loop threads, never on the stage thread; what it produces comes back to the stage
thread through :meth:`~flowcat_ft.processor.FrameProcessor.call_soon` and flows on through
the rings like any other frame. An interruption (or the call's end) cancels the work in
flight, and anything it still produces afterwards is dropped: each piece of work belongs to
a *generation*, and an interruption starts a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from flowcat_ft.frames import Direction, Frame
from flowcat_ft.metrics import Histogram
from flowcat_ft.processor import FrameProcessor

logger = logging.getLogger("flowcat_ft.services")


class AsyncService(FrameProcessor):
    """A processor that starts coroutines with :meth:`start_work` and emits their results
    with :meth:`emit`.

    Threading contract: ``_generation`` and ``_tasks`` are written on the stage thread only
    (:meth:`start_work`, the hooks); coroutines read ``_generation`` only through the
    value they were started with, and hand results back with :meth:`emit`, which is safe
    from any thread. ``ttfb`` (time from starting work to its first emitted frame) is
    written on the stage thread.
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self._generation = 0
        self._tasks: set[Future] = set()
        self._started_ns: dict[int, int] = {}
        self.ttfb = Histogram()

    # -- starting and stopping work ------------------------------------------------------

    def start_work(self, work: Callable[[int], Awaitable[Any]]) -> None:
        """Run ``work(generation)`` on an event loop (call on the stage thread).

        ``work`` passes its generation to :meth:`emit`. If it raises, an error frame goes
        upstream (not fatal: the service decides whether the call can go on).
        """
        generation = self._generation
        self._started_ns.setdefault(generation, time.perf_counter_ns())
        future = self.event_loop.submit(self._guard(work, generation))
        self._tasks.add(future)
        future.add_done_callback(lambda f: self.call_soon(self._tasks.discard, f))

    async def _guard(self, work: Callable[[int], Awaitable[Any]], generation: int) -> None:
        try:
            await work(generation)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning("%s: %s: %s", self.name, type(error).__name__, error)
            self.call_soon(self._report, generation, f"{type(error).__name__}: {error}")

    def _report(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self.push_error(f"{self.name}: {message}")

    def cancel_work(self) -> None:
        """Cancel everything in flight and drop whatever it still emits."""
        self._generation += 1
        self._started_ns.clear()
        for future in list(self._tasks):
            future.cancel()

    # -- results --------------------------------------------------------------------------

    def emit(
        self, generation: int, frame: Frame, direction: Direction = Direction.DOWNSTREAM
    ) -> None:
        """Push ``frame`` from a coroutine (any thread), unless its work was cancelled."""
        self.call_soon(self._emit, generation, frame, direction)

    def _emit(self, generation: int, frame: Frame, direction: Direction) -> None:
        if generation != self._generation:
            return  # produced by work an interruption cancelled
        started = self._started_ns.pop(generation, None)
        if started is not None:
            self.ttfb.add(time.perf_counter_ns() - started)
        self.push(frame, direction)

    # -- hooks --------------------------------------------------------------------------------

    def on_interruption(self) -> None:
        self.cancel_work()

    def on_cancel(self) -> None:
        self.cancel_work()
