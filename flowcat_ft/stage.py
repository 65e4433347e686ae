"""Stage threads: the OS threads that run a pipeline's processors for every call.

A pipeline's processors are split into stages; each stage runs on one dedicated thread
shared by all calls on that pipeline. Neighbouring stages are linked by :class:`Link`\\ s,
one per direction, each a pair of SPSC rings: system frames on their own ring, read
first, so they overtake queued data; data and control frames on the other, in order.

The first stage also reads the pipeline's entry: one bounded input ring per call, visited
round-robin a few frames at a time (so a flooding call cannot starve the others), and a
multi-producer queue for system frames sent from any thread.

Interruptions: each call keeps, per stage, an epoch stamped on every frame the stage sends
downstream (``Call._out_epoch``), raised when an interruption crosses the boundary; and the
epoch the interruption carried in (``Call._in_epoch``). A data frame arriving with an older
epoch was queued before the interruption and is dropped (its slab goes back to the pool),
unless it is the caller's own input (``interruptible`` is False).
The interruption itself travels on the system ring, ahead of the frames it makes stale.

Other threads hand work to a processor's stage thread with
:meth:`FrameProcessor.call_soon <flowcat_ft.processor.FrameProcessor.call_soon>`
(``Stage.soon``: a deque, appended from any thread, popped by the stage).

Back-pressure: a stage never blocks on a full ring. What does not fit waits in the link's
``pending`` queue, and while data is pending in one direction the stage stops reading data
flowing in that direction, so a slow stage slows its producers back to the call's input
ring, where :meth:`Call.push` waits. Reading the other direction goes on, so two stages
cannot deadlock on each other's full rings.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from flowcat_ft.dispatch import contain, deliver, logger
from flowcat_ft.frames import (
    CancelFrame,
    Direction,
    EndFrame,
    Frame,
    InterruptionFrame,
    SystemFrame,
)
from flowcat_ft.metrics import StageMetrics
from flowcat_ft.rings import SpscRing
from flowcat_ft.waiting import Doorbell

if TYPE_CHECKING:
    from flowcat_ft.call import Call
    from flowcat_ft.processor import FrameProcessor

DOWN = Direction.DOWNSTREAM
UP = Direction.UPSTREAM


class Link:
    """Frames from one stage thread (the producer) to a neighbour (the consumer).

    ``system`` and ``data`` are SPSC rings. ``pending_system`` and ``pending_data`` hold,
    in order, what did not fit; they and ``_published`` belong to the producer thread.
    """

    __slots__ = ("_published", "consumer", "data", "pending_data", "pending_system", "system")

    def __init__(self, capacity: int, consumer: Doorbell) -> None:
        self.system = SpscRing(capacity)
        self.data = SpscRing(capacity)
        self.pending_system: deque[Frame] = deque()
        self.pending_data: deque[Frame] = deque()
        self.consumer = consumer
        self._published = False

    def send(self, frame: Frame) -> None:
        if isinstance(frame, SystemFrame):
            ring, pending = self.system, self.pending_system
        else:
            ring, pending = self.data, self.pending_data
        if pending or not ring.push(frame):
            pending.append(frame)
        self._published = True

    def flush(self) -> None:
        """Move pending frames into the rings as space allows."""
        for ring, pending in ((self.system, self.pending_system), (self.data, self.pending_data)):
            while pending and ring.push(pending[0]):
                pending.popleft()
                self._published = True

    def ring_consumer(self) -> None:
        if self._published:
            self._published = False
            self.consumer.ring()

    def __len__(self) -> int:
        return len(self.system) + len(self.data) + len(self.pending_system) + len(self.pending_data)


class Entry:
    """Where frames enter a pipeline from other threads; read by the first stage.

    ``ready`` holds calls whose input ring has frames (``Call._scheduled`` says a call is
    in it); ``system`` holds system frames. Both are deques: any thread appends, the first
    stage pops (both operations are atomic).
    """

    __slots__ = ("doorbell", "ready", "system")

    def __init__(self, doorbell: Doorbell) -> None:
        self.ready: deque[Call] = deque()
        self.system: deque[Frame] = deque()
        self.doorbell = doorbell

    def schedule(self, call: Call) -> None:
        call._scheduled = True
        self.ready.append(call)
        self.doorbell.ring()

    def send_system(self, frame: Frame) -> None:
        self.system.append(frame)
        self.doorbell.ring()


class Stage(threading.Thread):
    """One stage thread: processors ``positions`` of every call on one pipeline."""

    def __init__(
        self,
        name: str,
        index: int,
        positions: range,
        doorbell: Doorbell,
        entry: Entry | None,
        batch: int = 64,
        quantum: int = 8,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.index = index
        self.positions = positions
        self.doorbell = doorbell
        self.entry = entry
        self.batch = batch
        self.quantum = quantum
        self.in_down: Link | None = None
        self.in_up: Link | None = None
        self.out_down: Link | None = None
        self.out_up: Link | None = None
        self.metrics = StageMetrics()
        self.profile_dir: str | None = None  # set by the runtime to profile this thread
        self.soon: deque[tuple[FrameProcessor, Callable[..., object], tuple]] = deque()
        self._running = True

    # -- sending (called by this stage's processors, on this thread) -------------------------

    def send_down(self, call: Call, frame: Frame) -> None:
        frame._call = call
        s = self.index
        if type(frame) is InterruptionFrame:
            call._out_epoch[s] += 1
        frame._epoch = call._out_epoch[s]
        self.out_down.send(frame)

    def send_up(self, call: Call, frame: Frame) -> None:
        frame._call = call
        self.out_up.send(frame)

    def call_soon(self, proc: FrameProcessor, callback: Callable[..., object], args: tuple) -> None:
        """Run ``callback(*args)`` for ``proc`` on this thread soon (from any thread)."""
        self.soon.append((proc, callback, args))
        self.doorbell.ring()

    # -- the loop ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False
        self.doorbell.ring()

    def queue_depth(self) -> int:
        """Frames waiting for this stage (approximate when read from another thread)."""
        depth = sum(len(link) for link in (self.in_down, self.in_up) if link is not None)
        if self.entry is not None:
            depth += len(self.entry.system) + sum(len(c._input) for c in list(self.entry.ready))
        return depth

    def run(self) -> None:
        if self.profile_dir is None:
            self._loop()
            return
        from flowcat_ft.profiling import ThreadProfiler  # turns the GIL on: on demand only

        with ThreadProfiler(self.profile_dir, self.name):
            self._loop()

    def _loop(self) -> None:
        doorbell = self.doorbell
        has_work = self._has_work
        while self._running:
            try:
                worked = self._run_once()
            except Exception:  # a bug in the runtime itself: keep serving the other calls
                logger.exception("stage %s: unexpected error", self.name)
                worked = True
            if not worked:
                congested = any(
                    link is not None and (link.pending_data or link.pending_system)
                    for link in (self.out_down, self.out_up)
                )
                doorbell.wait(has_work, timeout=0.0002 if congested else None)

    def _has_work(self) -> bool:
        if not self._running:
            return True
        if self.soon:
            return True
        entry = self.entry
        if entry is not None and (entry.system or entry.ready):
            return True
        for link in (self.in_down, self.in_up):
            if link is not None and (len(link.system) or len(link.data)):
                return True
        return False

    def _run_once(self) -> bool:
        start = time.perf_counter_ns()
        out_down, out_up = self.out_down, self.out_up
        for link in (out_down, out_up):
            if link is not None and (link.pending_data or link.pending_system):
                link.flush()
        handled = self._handle_system() + self._run_soon()
        # Data flowing upstream, unless what we already sent that way is still pending.
        # A system frame arriving meanwhile is handled before the next data frame.
        in_up = self.in_up
        if in_up is not None and not (out_up is not None and out_up.pending_data):
            for frame in in_up.data.pop_many(self.batch):
                if len(in_up.system):
                    handled += self._handle_system()
                self._from_downstream_stage(frame)
                handled += 1
        # Data flowing downstream, likewise.
        if not (out_down is not None and out_down.pending_data):
            if self.entry is not None:
                handled += self._drain_entry()
            else:
                in_down = self.in_down
                for frame in in_down.data.pop_many(self.batch):
                    if len(in_down.system):
                        handled += self._handle_system()
                    self._from_upstream_stage(frame)
                    handled += 1
        for link in (out_down, out_up):
            if link is not None:
                link.ring_consumer()
        if handled:
            metrics = self.metrics
            metrics.frames += handled
            metrics.batches += 1
            metrics.frame_ns.add((time.perf_counter_ns() - start) // handled)
        return handled > 0

    def _handle_system(self) -> int:
        """Handle every system frame waiting, from any direction."""
        handled = 0
        entry = self.entry
        if entry is not None:
            while entry.system:
                self._enter_system(entry.system.popleft())
                handled += 1
        if self.in_down is not None:
            for frame in self.in_down.system.pop_many(self.batch):
                self._from_upstream_stage(frame)
                handled += 1
        if self.in_up is not None:
            for frame in self.in_up.system.pop_many(self.batch):
                self._from_downstream_stage(frame)
                handled += 1
        return handled

    def _run_soon(self) -> int:
        """Run the callbacks other threads handed to this stage's processors."""
        soon = self.soon
        done = 0
        while soon:
            proc, callback, args = soon.popleft()
            if proc.call._done[self.index]:
                continue  # cancelled meanwhile
            try:
                callback(*args)
            except Exception as error:
                contain(proc, None, error)
            done += 1
        return done

    # -- frames arriving -----------------------------------------------------------------------

    def _from_upstream_stage(self, frame: Frame) -> None:
        """A frame travelling downstream, from the previous stage."""
        call = frame._call
        s = self.index
        if call._done[s]:
            return
        kind = type(frame)
        if kind is InterruptionFrame:
            call._in_epoch[s] = frame._epoch
        elif frame._epoch < call._in_epoch[s] and getattr(frame, "interruptible", False):
            self.metrics.dropped_stale += 1
            call.dropped[s] += 1
            return
        deliver(call._processors[self.positions.start], DOWN, frame)
        if kind is CancelFrame:
            call._done[s] = True

    def _from_downstream_stage(self, frame: Frame) -> None:
        """A frame travelling upstream, from the next stage."""
        call = frame._call
        if not call._done[self.index]:
            deliver(call._processors[self.positions.stop - 1], UP, frame)

    def _enter_system(self, frame: Frame) -> None:
        """A system frame (or an ``end()`` request) sent into the pipeline from outside."""
        call = frame._call
        if call._done[0]:
            return
        kind = type(frame)
        if kind is EndFrame:  # runs after the call's queued input: see _drain_entry
            call._end_requested = frame
            if not call._scheduled:
                self.entry.schedule(call)
            return
        if kind is CancelFrame:
            call._input_closed = True
            _discard(call)
        deliver(call._processors[0], DOWN, frame)
        if kind is CancelFrame:
            call._done[0] = True

    def _drain_entry(self) -> int:
        """Take up to ``quantum`` frames from each ready call, round-robin."""
        entry = self.entry
        ready = entry.ready
        first = self.positions.start
        handled = 0
        out_down = self.out_down
        for _ in range(len(ready)):
            try:
                call = ready.popleft()
            except IndexError:
                break
            # System frames first: those sent before this call's data (its StartFrame,
            # above all) may have arrived after _handle_system last looked. They were
            # appended before the call was scheduled, so popping the call makes them seen.
            if entry.system:
                handled += self._handle_system()
            proc = call._processors[first]
            if call._input_closed:
                _discard(call)
            else:
                for frame in call._input.pop_many(self.quantum):
                    deliver(proc, DOWN, frame)
                    handled += 1
            if len(call._input):
                ready.append(call)
            else:
                end = call._end_requested
                if end is not None and not call._input_closed:
                    call._input_closed = True
                    deliver(proc, DOWN, end)
                    handled += 1
                # Unschedule, then look again: a producer that published just before we
                # cleared the flag saw it set and did not schedule the call.
                call._scheduled = False
                if len(call._input) and not call._scheduled:
                    entry.schedule(call)
            if out_down is not None and out_down.pending_data:
                break
        return handled


def _discard(call: Call) -> None:
    """Drop a closed call's queued input (the slabs go back to the pool)."""
    while call._input.pop_many(call._input.capacity):
        pass
