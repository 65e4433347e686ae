"""Event-loop threads: each runs one asyncio loop, for network I/O beside the stage threads.

Stage threads must never block on an event loop, and waking a loop costs a system call, so
frames cross over in batches: a :class:`LoopBridge` collects frames from any thread in a
deque and wakes its loop once per batch (``loop.call_soon_threadsafe``), not once per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any

from flowcat_ft.call import Inbox
from flowcat_ft.frames import Direction, Frame

LoopCallback = Callable[[Frame, Direction], None]


class LoopBridge:
    """Hands frames from stage threads to callbacks run on one event loop.

    Threading contract: ``_batch`` is a deque of ``(callback, frame, direction)``, appended
    by any thread and drained by the loop. ``_scheduled`` is set by a producer that found it
    clear (and then wakes the loop) and cleared by the loop before it drains; a producer
    appends before it reads the flag and the loop clears the flag before it reads the deque,
    so (with 3.13t's sequentially consistent attribute accesses) no batch is left behind.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._batch: deque[tuple[LoopCallback, Frame, Direction]] = deque()
        self._scheduled = False
        self.wakeups = 0

    def send(self, callback: LoopCallback, frame: Frame, direction: Direction) -> None:
        """Run ``callback(frame, direction)`` on the loop soon (callable from any thread)."""
        self._batch.append((callback, frame, direction))
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody is left to deliver to
                self._batch.clear()

    def _drain(self) -> None:
        self.wakeups += 1
        self._scheduled = False
        batch = self._batch
        while batch:
            callback, frame, direction = batch.popleft()
            callback(frame, direction)


class LoopThread(threading.Thread):
    """The OS thread of an :class:`EventLoopThread` (so that CPU accounting can tell event
    loops from other threads)."""


class EventLoopThread:
    """An asyncio event loop running on its own OS thread.

    Coroutines are handed to it from any thread with :meth:`submit`; stage threads hand it
    output frames through its :attr:`bridge`, one wake-up per batch. Code running on the
    loop pushes calls' input through its :attr:`inbox`, handed to the stage threads once
    per loop turn.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.bridge = LoopBridge(self.loop)
        self.inbox = Inbox(partial(self.loop.call_soon, self._flush_inbox))
        self._thread = LoopThread(target=self._run, name=name, daemon=True)
        self._thread.start()
        with _running_lock:
            _running.add(self)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def _flush_inbox(self) -> None:
        self.inbox.flush()

    def wake(self) -> None:
        """Have the loop's thread run Python code once, soon, even when it has nothing to
        do: on 3.13t an object this thread made and another freed is freed only when this
        thread next runs (biased reference counting), audio frames with their slabs. A
        runtime's housekeeper wakes every running loop now and then (see
        :func:`running_loops`)."""
        with contextlib.suppress(RuntimeError):  # closed: nothing is left to free
            self.loop.call_soon_threadsafe(_nothing)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future:
        """Run ``coro`` on this loop; returns a :class:`concurrent.futures.Future`."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the loop's tasks, stop it and join its thread."""
        with _running_lock:
            _running.discard(self)
        if self.loop.is_closed() or not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(cancel_all()).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)


class EventLoops:
    """The event-loop threads a server runs on: its own, started by :meth:`start` and
    stopped by :meth:`stop`, or another owner's (the WebSocket server's, shared with SIP
    and AudioSocket), used but left running::

        loops = EventLoops("flowcat-sip", 2)  # starts and stops two threads of its own
        loops = EventLoops("flowcat-sip", ws_server.loops)  # shares these, never stops them

    Threading contract: :meth:`start` and :meth:`stop` are called by the thread that starts
    and stops the server, which alone changes the list; other threads (the loops' own)
    read it only while the server runs.
    """

    def __init__(self, name: str, loops: int | Sequence[EventLoopThread]) -> None:
        self.name = name
        self.owned = isinstance(loops, int)
        """Whether the threads are this object's, to start and stop."""
        self._count = loops if isinstance(loops, int) else len(loops)
        self._loops: list[EventLoopThread] = [] if isinstance(loops, int) else list(loops)

    def start(self) -> list[EventLoopThread]:
        """Start the threads (if they are this object's and not running); returns them."""
        if self.owned and not self._loops:
            self._loops = [EventLoopThread(f"{self.name}-{i}") for i in range(self._count)]
        return list(self._loops)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads if they are this object's (shared ones are left running)."""
        if self.owned:
            loops, self._loops = self._loops, []
            for io in loops:
                io.stop(timeout)

    def __iter__(self) -> Iterator[EventLoopThread]:
        return iter(self._loops)


# Every EventLoopThread started and not stopped, whoever made it (a runtime, a transport's
# server, a client): added and discarded under the lock by the threads that start and stop
# loops, read (copied under the lock) by runtimes' housekeepers.
_running_lock = threading.Lock()
_running: weakref.WeakSet[EventLoopThread] = weakref.WeakSet()


def running_loops() -> list[EventLoopThread]:
    """The event-loop threads of this process now running."""
    with _running_lock:
        return list(_running)


def _nothing() -> None:
    pass
