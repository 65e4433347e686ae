"""A call: one conversation's frames through a pipeline, and the embedder's handle on it."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TypeVar

from flowcat_ft.frames import (
    CancelFrame,
    DataFrame,
    Direction,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    SystemFrame,
)
from flowcat_ft.processor import LIFECYCLE_FRAMES, EventLoop, FrameProcessor
from flowcat_ft.stage import Entry, Route, Shard
from flowcat_ft.waiting import Doorbell

if TYPE_CHECKING:
    from flowcat_ft.slabs import SlabPool

logger = logging.getLogger("flowcat_ft")

OutputCallback = Callable[[Frame, Direction], None]
T = TypeVar("T")

_ids = itertools.count(1)


class RuntimeServices(Protocol):
    """What a call hands on to its processors from the runtime that opened it (a
    :class:`flowcat_ft.runtime.Runtime`): see :meth:`Call.event_loop` and
    :meth:`Call.shared`."""

    def event_loop(self) -> EventLoop: ...

    def shared(self, key: Hashable, factory: Callable[[], T]) -> T: ...


class CallClosedError(RuntimeError):
    """Frames were pushed into a call that has ended or is ending."""


class Call:
    """One call on a pipeline: push input frames in, get output frames out.

    Made by :meth:`Runtime.open_call <flowcat_ft.runtime.Runtime.open_call>`. Output goes to
    the ``on_output(frame, direction)`` callback given there, or, without one, to
    :meth:`frames`. The callback runs on stage threads (downstream output on the last
    stage's thread, upstream output such as errors on the first's) and must not block.

    The call is its processors' :class:`~flowcat_ft.processor.CallContext`. Its frames
    travel its ``route`` (a :class:`~flowcat_ft.stage.Route`) through the stage threads of
    its shard, which the runtime wires its processors to; what the stage threads keep
    for the call is there, under the route's own threading contract.

    Threading contract:

    - :meth:`push`, :meth:`try_push`, :meth:`push_audio` and :meth:`waiting_for_room` may
      be called by one thread at a time per call (the call's input ring has a single
      producer);
    - :meth:`interrupt`, :meth:`end`, :meth:`cancel` and :meth:`frames` may be called from
      any thread; :meth:`wait` and :meth:`close` from any thread but the call's own stage
      threads (its processors and ``on_output`` run there, and the call ends there, so a
      wait would never return: they raise :class:`RuntimeError` instead);
    - ``_room_waiter`` (see :meth:`waiting_for_room`) is written by the pushing thread only
      and read by the first stage thread right after it takes frames from the input ring
      (:meth:`_input_taken`), and by any thread that closes the call (``_closing``). Each
      side writes first (the pusher ``_room_waiter``, the stage the ring's ``_head``, a
      closer ``_closing``) and then reads what the other writes; these attribute accesses
      are sequentially consistent on 3.13t, as :mod:`flowcat_ft.waiting` argues, so
      either the pusher's next look finds room (or the call closed) or the other thread
      finds the waiter and wakes it;
    - ``frames_in`` is written by the pushing thread, ``frames_out`` by the stage threads
      that emit output.
    """

    def __init__(
        self,
        shard: Shard,
        runtime: RuntimeServices,
        processors: list[FrameProcessor],
        on_output: OutputCallback | None,
        input_capacity: int,
        output_capacity: int | None,
    ) -> None:
        self.id = next(_ids)
        self._shard = shard
        self._runtime = runtime
        self._processors = processors
        self.route = Route(
            processors,
            len(shard.stages),
            input_capacity,
            self._emit_down,
            self._emit_up,
            self._input_taken,
        )
        self._room_waiter: Callable[[], None] | None = None
        self._closing = False
        self.failed = False
        self._finished = threading.Event()
        self.end_reason: str | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.started_ns = time.monotonic_ns()
        if on_output is None:
            self._output: _OutputQueue | None = _OutputQueue(output_capacity)
            on_output = self._output.put
        else:
            self._output = None
        self._on_output = on_output

    def __repr__(self) -> str:
        state = "ended" if self.done else "closing" if self._closing else "open"
        return f"<Call {self.id} {state}>"

    @property
    def done(self) -> bool:
        """True once the call has ended (its end or cancel frame left the pipeline)."""
        return self._finished.is_set()

    @property
    def processors(self) -> list[FrameProcessor]:
        """The call's own processors, in pipeline order (each used on its stage thread)."""
        return self._processors

    @property
    def dropped(self) -> list[int]:
        """Per stage, the call's frames dropped there as stale (after an interruption)."""
        return self.route.dropped

    @property
    def pool(self) -> SlabPool:
        """The runtime's slab pool."""
        return self._shard.pool

    def event_loop(self) -> EventLoop:
        """One of the runtime's event-loop threads, handed out in turn, for network I/O."""
        return self._runtime.event_loop()

    def shared(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The object the runtime keeps under ``key`` for every call, made by ``factory()``
        on first use (see :meth:`Runtime.shared <flowcat_ft.runtime.Runtime.shared>`)."""
        return self._runtime.shared(key, factory)

    # -- input -----------------------------------------------------------------------------

    def push(self, frame: Frame, timeout: float | None = None) -> None:
        """Send ``frame`` into the pipeline.

        System frames go ahead of queued input. When the call's input ring is full the
        caller waits (back-pressure) up to ``timeout`` seconds (for ever if None), then
        :class:`TimeoutError`. Raises :class:`CallClosedError` once the call is ending,
        waiting or not.
        """
        if self.try_push(frame):
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        room = threading.Event()
        with self.waiting_for_room(room.set):
            while not self.try_push(frame):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"call {self.id}: input ring full for {timeout} s")
                room.wait(left)
                room.clear()  # before the next look, so a wake-up after it is kept

    def try_push(self, frame: Frame) -> bool:
        """Like :meth:`push` but never waits: False if the input ring is full."""
        if self._closing:
            raise CallClosedError(f"call {self.id} is closed; no more frames can be pushed")
        if type(frame) in LIFECYCLE_FRAMES:
            raise ValueError(f"use end(), cancel() or interrupt() rather than pushing {frame!r}")
        if isinstance(frame, SystemFrame):
            self._send_system(frame)
            return True
        if not self._queue(frame):
            return False
        route = self.route
        if not route.scheduled:
            self._shard.entry.schedule(route)
        return True

    def _queue(self, frame: Frame) -> bool:
        """Put a data frame in the input ring (False if full); the pusher then sees to it
        that the route is scheduled. The frame names its route before the ring publishes
        it: a first stage that already has the route may take it at once."""
        route = self.route
        frame._call = route
        if not route.input.push(frame):
            return False
        self.frames_in += 1
        return True

    @contextmanager
    def waiting_for_room(self, wake: Callable[[], None]) -> Iterator[None]:
        """While in this block, ``wake()`` is called whenever the input ring may have room
        again: each time the first stage takes frames from it, and when the call closes
        (pushing then raises :class:`CallClosedError`).

        For the pushing thread, to wait for room its own way (:meth:`push` parks on a
        :class:`threading.Event`; :class:`~flowcat_ft.aio.AsyncCall` awaits on its event
        loop): look again after entering the block, and after each wake-up. ``wake`` runs
        on other threads, stage threads among them: it must be quick, and never block or
        raise.
        """
        self._room_waiter = wake
        try:
            yield
        finally:
            self._room_waiter = None

    def push_audio(
        self,
        data: bytes,
        sample_rate: int,
        num_channels: int = 1,
        codec: str = "pcm16",
        timeout: float | None = None,
    ) -> None:
        """Copy ``data`` into a slab and push it as an :class:`InputAudioRawFrame`.

        Back-pressure as in :meth:`push`; while every slab is in use (the pipeline holds
        them) it waits for one too, up to ``timeout``, then
        :class:`~flowcat_ft.slabs.PoolExhaustedError`."""
        pool = self._shard.pool
        wait = math.inf if timeout is None else timeout
        frame = InputAudioRawFrame.from_bytes(pool, data, sample_rate, num_channels, codec, wait)
        self.push(frame, timeout)

    def _input_taken(self) -> None:
        """Wake the pusher waiting for room, if there is one (see :meth:`waiting_for_room`).

        Called on the first stage thread right after it takes frames from the input ring,
        and by :meth:`_close_input`; cheap when nobody waits."""
        wake = self._room_waiter
        if wake is not None:
            try:
                wake()
            except Exception:  # the frames taken must still be delivered
                logger.exception("a room waiter raised", extra={"call_id": self.id})

    def _close_input(self) -> None:
        """Refuse further input, and wake a pusher waiting for room to say so."""
        self._closing = True
        self._input_taken()

    # -- lifecycle -------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Interrupt the bot: every stage drops this call's queued downstream data frames.

        Works while the call drains after :meth:`end` too (the user may barge in on the
        bot's last words)."""
        if not self.done:
            self._send_system(InterruptionFrame())

    def end(self) -> None:
        """End the call after every frame pushed so far has been processed."""
        if not self._closing:
            self._close_input()
            self._send_system(EndFrame())

    def cancel(self, reason: str = "cancelled") -> None:
        """End the call now, dropping whatever is queued."""
        if not self.done:
            self._close_input()
            self._send_system(CancelFrame(reason))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the call has ended; False if ``timeout`` passed first.

        Raises :class:`RuntimeError` on one of the call's own stage threads (in its
        processors or ``on_output``), where the wait could never end.
        """
        self._refuse_own_thread("wait()")
        return self._finished.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """End the call and wait for it; cancel it if it has not ended within ``timeout``.

        Raises :class:`RuntimeError`, having done nothing, on one of the call's own stage
        threads (see :meth:`wait`); :meth:`end` or :meth:`cancel` work there.
        """
        self._refuse_own_thread("close()")
        self.end()
        if not self.wait(timeout):
            self.cancel("close timed out")
            self.wait(timeout)

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse_own_thread(self, method: str) -> None:
        if threading.current_thread() in self._shard.stages:
            raise RuntimeError(
                f"call {self.id}: {method} on one of the call's own stage threads (in a "
                "processor or on_output) would never return, since the call ends on them; "
                "use end() or cancel(), which do not wait"
            )

    def _send_system(self, frame: Frame) -> None:
        frame._call = self.route
        self._shard.entry.send_system(frame)

    # -- output ----------------------------------------------------------------------------

    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """Iterate over output frames (both directions) until the call ends.

        Only for calls opened without ``on_output``. Raises :class:`TimeoutError` if no frame
        comes within ``timeout`` seconds.
        """
        if self._output is None:
            raise RuntimeError("this call delivers output to its on_output callback")
        return self._output.iterate(timeout)

    def _emit(self, frame: Frame, direction: Direction) -> None:
        """A frame leaving the pipeline (called on the first or last stage thread)."""
        kind = type(frame)
        if kind is EndFrame or kind is CancelFrame:
            if direction is Direction.UPSTREAM:  # a processor asked for the call to end
                self.end() if kind is EndFrame else self.cancel(frame.reason)
                return
            self._close_input()
            self.end_reason = "ended" if kind is EndFrame else frame.reason
        elif kind is ErrorFrame and frame.fatal:
            self.failed = True
            self.cancel(f"fatal error: {frame.error}")
        elif kind is InterruptionFrame and direction is Direction.DOWNSTREAM:
            self._shard.interruption_ns.add(time.perf_counter_ns() - frame.entered_ns)
        self.frames_out += 1
        try:
            self._on_output(frame, direction)
        except Exception:
            logger.exception("on_output raised on %r", frame, extra={"call_id": self.id})
        if kind is EndFrame or kind is CancelFrame:
            # The runtime forgets the call first: once wait() returns, it is gone.
            self._shard.on_call_finished(self.id)
            self._let_go()
            self._finished.set()  # done before frames() ends: its reader may then ask
            if self._output is not None:
                self._output.close()

    def _let_go(self) -> None:
        """The call has ended (on the stage thread its last frame left from): break the
        reference cycles between its parts, so that when its holder lets go of it (a
        transport's session, an :class:`~flowcat_ft.aio.AsyncCall`, the embedder) the
        call, its processors, the frames they buffer and its unread output go at once,
        by reference counting, slabs and all, leaving the collector nothing to find.

        The cycles: each processor holds the call and its neighbours, the route holds the
        processors and the call's output methods, and the output callback often holds
        the call's holder. From here on processors hold the call by a weak proxy and
        their pushes are dropped (:meth:`FrameProcessor._unwire
        <flowcat_ft.processor.FrameProcessor._unwire>`); the route holds the processors
        by weak proxies, so a frame still in flight reaches them while the call lives and
        is dropped after; the route's outputs and the output callback drop frames; and
        every stage marks the call ``done``, dropping its frames at the next stage
        boundary. :attr:`processors` and :meth:`frames` keep working.

        The stage threads change each of these fields with one atomic store; a stage
        that reads the old value an instant later does what it did before the end.
        """
        route = self.route
        me = weakref.proxy(self)
        for proc in self._processors:
            proc._unwire(me)
        route.processors = [weakref.proxy(proc) for proc in self._processors]
        route.emit_down = route.emit_up = _drop
        route.input_taken = _nothing
        for stage in range(len(route.done)):
            route.done[stage] = True
        self._on_output = _ignore

    def _emit_down(self, frame: Frame) -> None:
        self._emit(frame, Direction.DOWNSTREAM)

    def _emit_up(self, frame: Frame) -> None:
        self._emit(frame, Direction.UPSTREAM)


class Inbox:
    """Data frames that one thread pushes into many calls, handed to their stage threads
    together: each shard's first stage is scheduled and woken once per :meth:`flush`,
    not once per frame. An event-loop thread pushes what it reads in one loop turn and
    flushes at the end of the turn (see :class:`flowcat_ft.loops.EventLoopThread`).

    ``flush_soon`` is called on the first push after a flush, to arrange the next flush.

    Threading contract: an inbox belongs to one thread, which is then the producer of
    every call it pushes into (as for :meth:`Call.push`). A call pushed here has its route
    marked ``scheduled`` at once and appended to its entry's ready queue at :meth:`flush`:
    until then no stage thread can clear the mark (the route is in no ready queue), so the
    call is scheduled exactly once (see :meth:`flowcat_ft.stage.Stage._take_entry`).
    """

    def __init__(self, flush_soon: Callable[[], object]) -> None:
        self._flush_soon = flush_soon
        self._pending: list[Call] = []
        self._flushing = False

    def push(self, call: Call, frame: DataFrame) -> bool:
        """Queue ``frame`` in ``call``'s input; False (nothing queued) if the call is
        ending or its input ring is full: the caller drops the frame."""
        if call._closing or not call._queue(frame):
            return False
        route = call.route
        if not route.scheduled:
            route.scheduled = True
            self._pending.append(call)
            if not self._flushing:
                self._flushing = True
                self._flush_soon()
        return True

    def flush(self) -> None:
        """Hand every call pushed into since the last flush to its stage thread."""
        self._flushing = False
        pending, self._pending = self._pending, []
        by_entry: dict[Entry, list[Route]] = {}
        for call in pending:
            by_entry.setdefault(call._shard.entry, []).append(call.route)
        for entry, routes in by_entry.items():
            entry.schedule_many(routes)


def _drop(frame: Frame) -> None:
    frame.release()


def _nothing() -> None:
    pass


def _ignore(frame: Frame, direction: Direction) -> None:
    frame.release()


_CLOSED = object()


class _OutputQueue:
    """Output frames waiting for :meth:`Call.frames`: stage threads put, one reader gets.

    ``_frames`` is a deque (atomic appends and pops from any thread); the reader sleeps on
    ``_doorbell``, which every put rings. With a ``capacity``, a reader that falls that many
    frames behind loses data frames (counted in ``dropped``), never system or control
    frames; without one the queue grows as the reader lags. ``dropped`` is written by the
    last stage thread only (data frames leave downstream).
    """

    def __init__(self, capacity: int | None) -> None:
        self._frames: deque[object] = deque()
        self._doorbell = Doorbell("block")
        self.capacity = capacity
        self.dropped = 0

    def put(self, frame: Frame, direction: Direction) -> None:
        capacity = self.capacity
        if capacity is not None and len(self._frames) >= capacity and isinstance(frame, DataFrame):
            self.dropped += 1
            return
        self._frames.append(frame)
        self._doorbell.ring()

    def close(self) -> None:
        self._frames.append(_CLOSED)
        self._doorbell.ring()

    def iterate(self, timeout: float | None) -> Iterator[Frame]:
        frames = self._frames
        while True:
            if not frames and not self._doorbell.wait(lambda: bool(frames), timeout):
                raise TimeoutError(f"no output frame within {timeout} s")
            item = frames.popleft()
            if item is _CLOSED:
                return
            yield item
