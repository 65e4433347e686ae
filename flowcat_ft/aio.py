"""An asyncio adapter: calls whose output arrives on an event loop, for transports.

Stage threads must never block on an event loop: output crosses over through a
:class:`~flowcat_ft.loops.LoopBridge`, one loop wake-up per batch of frames.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from flowcat_ft.frames import CancelFrame, Direction, EndFrame, Frame, StartFrame
from flowcat_ft.loops import LoopBridge, LoopCallback

if TYPE_CHECKING:
    from flowcat_ft.call import Call
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.runtime import Runtime


class _Room:
    """Wakes a coroutine waiting for room in a call's input ring (see
    :meth:`Call.waiting_for_room <flowcat_ft.call.Call.waiting_for_room>`).

    Threading contract: :meth:`wake` runs on other threads (the first stage's, or one that
    closes the call). ``_woken`` is set by a waker that found it clear, which then has the
    loop set ``_event``; the loop clears ``_woken`` after each wake-up, before the caller
    looks at the ring again. So there is one loop wake-up per wait however often the stage
    takes input, and a wake-up after that look finds ``_woken`` clear and wakes the loop
    again (each side writes, then reads what the other writes: sequentially consistent on
    3.13t, as for :class:`~flowcat_ft.loops.LoopBridge`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self._woken = False

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()
        self._event.clear()
        self._woken = False


class AsyncCall:
    """A :class:`~flowcat_ft.call.Call` seen from an event loop.

    Output goes to ``on_output(frame, direction)`` run on the loop, or, without one, to the
    async iterator :meth:`frames`. Input never blocks the loop: :meth:`push_nowait` reports
    a full input ring, and :meth:`push` waits for room asynchronously.
    """

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline,
        bridge: LoopBridge,
        on_output: LoopCallback | None = None,
        start_frame: StartFrame | None = None,
    ) -> None:
        # Without on_output, frames go to _queue (not through a bound method of self kept
        # on self: that would be a reference cycle, left for the garbage collector).
        self._queue: asyncio.Queue[Frame | None] | None = None
        if on_output is None:
            self._queue = asyncio.Queue()
        self._on_output = on_output
        self._ended = asyncio.Event()
        self._room_turn = asyncio.Lock()  # a call wakes one pusher: they wait in turn
        self.call: Call = runtime.open_call(
            pipeline, lambda f, d: bridge.send(self._deliver, f, d), start_frame=start_frame
        )

    @property
    def id(self) -> int:
        return self.call.id

    def _deliver(self, frame: Frame, direction: Direction) -> None:
        queue = self._queue
        if queue is None:
            self._on_output(frame, direction)
        else:
            queue.put_nowait(frame)
        if type(frame) in (EndFrame, CancelFrame) and direction is Direction.DOWNSTREAM:
            self._ended.set()
            if queue is not None:
                queue.put_nowait(None)

    def push_nowait(self, frame: Frame) -> bool:
        """Push without waiting; False if the call's input ring is full (or pushes are
        waiting for room: this one would overtake them)."""
        return not self._room_turn.locked() and self.call.try_push(frame)

    async def push(self, frame: Frame, timeout: float | None = None) -> None:
        """Push; while the input ring is full, wait for room without blocking the loop.

        As :meth:`Call.push <flowcat_ft.call.Call.push>`: :class:`TimeoutError` after
        ``timeout`` seconds (None: no limit), :class:`~flowcat_ft.call.CallClosedError`
        once the call is ending. Pushes from several tasks go in the order they were made,
        a push that finds others waiting for room waiting behind them.
        """
        call = self.call
        if not self._room_turn.locked() and call.try_push(frame):
            return
        room = _Room(asyncio.get_running_loop())
        try:
            async with asyncio.timeout(timeout), self._room_turn:
                with call.waiting_for_room(room.wake):
                    while not call.try_push(frame):
                        await room.wait()
        except TimeoutError:
            raise TimeoutError(f"call {self.id}: input ring full for {timeout} s") from None

    def interrupt(self) -> None:
        self.call.interrupt()

    def end(self) -> None:
        self.call.end()

    def cancel(self, reason: str = "cancelled") -> None:
        self.call.cancel(reason)

    async def wait(self) -> None:
        """Wait until the call has ended (``call.done``), without blocking the loop."""
        await self._ended.wait()
        if not self.call.done:  # the stage thread marks it done just after the last frame
            await asyncio.to_thread(self.call.wait)

    async def frames(self) -> AsyncIterator[Frame]:
        """Output frames until the call ends (only without ``on_output``)."""
        if self._queue is None:
            raise RuntimeError("this call delivers output to its on_output callback")
        while (frame := await self._queue.get()) is not None:
            yield frame


__all__ = ["AsyncCall"]
