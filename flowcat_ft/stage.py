"""Stage threads: the OS threads that run a pipeline's processors for every call.

A pipeline's processors are split into stages; each stage runs on one dedicated thread
shared by all calls on that pipeline. A :class:`Shard` is one chain of them, and each
call on it has a :class:`Route` through it: its processors, its input ring, and the state
the stage threads keep for it. Neighbouring stages are linked by :class:`Link`\\ s,
one per direction, each a pair of SPSC rings: system frames on their own ring, read
first, so they overtake queued data; data and control frames on the other, in order.

The first stage also reads the pipeline's entry: one bounded input ring per call, visited
round-robin a few frames at a time (so a flooding call cannot starve the others), and a
multi-producer queue for system frames sent from any thread.

Interruptions: each call's route keeps, per stage, an epoch stamped on every frame the
stage sends downstream (``Route.out_epoch``), raised when an interruption crosses the
boundary; and the epoch the interruption carried in (``Route.in_epoch``). A data frame
arriving with an older epoch was queued before the interruption and is dropped (its slab
goes back to the pool at once), unless it is the caller's own input (``interruptible`` is
False).
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
from functools import partial

from flowcat_ft.dispatch import contain, deliver, logger
from flowcat_ft.frames import (
    CancelFrame,
    Direction,
    EndFrame,
    Frame,
    InterruptionFrame,
    SystemFrame,
)
from flowcat_ft.metrics import Histogram, StageMetrics
from flowcat_ft.processor import LIFECYCLE_FRAMES, Batch, FrameProcessor, Push
from flowcat_ft.rings import SpscRing
from flowcat_ft.slabs import PoolExhaustedError, SlabPool
from flowcat_ft.waiting import Doorbell

DOWN = Direction.DOWNSTREAM
UP = Direction.UPSTREAM

MIN_BATCH = 8
"""A pass that takes fewer data frames than this runs them depth first through
``process()``, as calls, without queues or kernels: on 3.13t a kernel call costs some
5 µs however few frames it gets (``bench.routing``), and a queued hop a few µs per pass,
where a direct ``process()`` hop costs about 0.4 µs."""


class Route:
    """One call's way through a :class:`Shard`: its processors, its input ring, and the
    state the stage threads keep for it. Every frame of the call points to it
    (``Frame._call``).

    The call (:class:`flowcat_ft.call.Call`) makes it: it pushes into ``input``, hears
    from ``input_taken()`` each time the first stage has taken frames from there, and gets
    the frames leaving the pipeline from ``emit_down(frame)`` (on the last stage's thread)
    and ``emit_up(frame)`` (on the first's).

    Threading contract:

    - ``processors`` are made before the call starts and then used only by the stage
      thread that runs each one; ``emit_down``, ``emit_up`` and ``input_taken`` never
      change;
    - ``input`` is an SPSC ring: the call's pushing thread produces, the first stage
      consumes;
    - ``scheduled`` (the route is in its entry's ready queue, or about to be) is set by the
      pushing thread and cleared by the first stage thread (see :meth:`Stage._take_entry`
      for the ordering that keeps a call from being forgotten);
    - ``in_epoch[s]``, ``out_epoch[s]``, ``done[s]`` (the call was cancelled there) and
      ``dropped[s]`` are written only by stage thread ``s``, except that when the call
      ends the last stage's thread sets every ``done[s]`` and replaces ``processors``
      and the ``emit`` callbacks (:meth:`Call._let_go <flowcat_ft.call.Call._let_go>`;
      each a single store, after which nothing of the call is left to run);
      ``input_closed`` (the first stage has passed the call's end or cancel and reads no
      more input) and ``end_requested`` by the first stage's thread.
    """

    __slots__ = (
        "done",
        "dropped",
        "emit_down",
        "emit_up",
        "end_requested",
        "in_epoch",
        "input",
        "input_closed",
        "input_taken",
        "out_epoch",
        "processors",
        "scheduled",
    )

    def __init__(
        self,
        processors: list[FrameProcessor],
        stages: int,
        input_capacity: int,
        emit_down: Push,
        emit_up: Push,
        input_taken: Callable[[], None],
    ) -> None:
        self.processors = processors
        self.input = SpscRing(input_capacity)
        self.scheduled = False
        self.end_requested: EndFrame | None = None
        self.input_closed = False
        self.in_epoch = [0] * stages
        self.out_epoch = [0] * stages
        self.done = [False] * stages
        self.dropped = [0] * stages
        self.emit_down = emit_down
        self.emit_up = emit_up
        self.input_taken = input_taken


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

    ``ready`` holds the routes of calls whose input ring has frames (``Route.scheduled``
    says a route is in it); ``system`` holds system frames. Both are deques: any thread
    appends, the first stage pops (both operations are atomic).
    """

    __slots__ = ("doorbell", "ready", "system")

    def __init__(self, doorbell: Doorbell) -> None:
        self.ready: deque[Route] = deque()
        self.system: deque[Frame] = deque()
        self.doorbell = doorbell

    def schedule(self, route: Route) -> None:
        route.scheduled = True
        self.ready.append(route)
        self.doorbell.ring()

    def schedule_many(self, routes: list[Route]) -> None:
        """Make ``routes`` (each already marked ``scheduled``) ready, with one wake-up."""
        self.ready.extend(routes)
        self.doorbell.ring()

    def waiting(self) -> int:
        """Frames waiting here, for metrics read from any thread (approximate).

        Iterating ``ready`` while another thread appends or pops raises "deque mutated
        during iteration" on 3.13t (``copy()`` iterates too), so a few tries are made; if
        all meet a change, each ready call counts as one frame.
        """
        for _ in range(3):
            try:
                return len(self.system) + sum(len(route.input) for route in tuple(self.ready))
            except RuntimeError:
                continue
        return len(self.system) + len(self.ready)

    def send_system(self, frame: Frame) -> None:
        self.system.append(frame)
        self.doorbell.ring()


class Stage(threading.Thread):
    """One stage thread: processors ``positions`` of every call on one pipeline.

    Frames move through the stage a batch at a time. Each wake-up (a *pass*) first handles
    the system frames waiting, then takes the data waiting on its inputs (every ready
    call's input at the entry, up to ``cap`` frames, ``quantum`` per call per turn; a
    link's ring, ``batch`` at a time) into the queue of its first (or, upstream, last)
    position, and sweeps: each position takes its whole queue at once, in order, and what
    its processors push lands in the next position's queue. A position whose processor
    class has a batch kernel (:meth:`FrameProcessor.process_batch
    <flowcat_ft.processor.FrameProcessor.process_batch>`) gets the queue in one call;
    any other gets its frames one by one, and pushes them straight on through its
    neighbours without a kernel (depth first, as calls). A pass with fewer than
    :data:`MIN_BATCH` data frames is not worth the queues: it runs every frame depth first
    through ``process()``. Each call's frames keep their order at every position.

    A system frame that arrives during a sweep is handled before the next frame of a
    position run frame by frame, and before the next position: an interruption first
    drops its call's interruptible frames still queued in this stage, a cancel all of them.

    ``queued[k]`` says how frames reach position ``k``: into its queue, swept a position at
    a time (a position whose first call's class had a kernel), or straight to the
    processor. It is fixed when the first call opens; ``kernels[k]`` can later be
    dropped (a call with another class there, or observed): the queue is then swept frame
    by frame, and every call's frames still reach the position one way, in order.

    Threading contract: ``_down``, ``_up`` (the positions' queues), ``kernels`` and
    ``queued`` belong to this thread (``kernels`` and ``queued`` are set before the first
    call's frames arrive, and ``kernels`` is only ever cleared, by the runtime under its
    lock, before another call's first frame).
    """

    def __init__(
        self,
        name: str,
        index: int,
        positions: range,
        doorbell: Doorbell,
        entry: Entry | None,
        pool: SlabPool,
        batch: int = 64,
        quantum: int = 8,
        cap: int = 256,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.index = index
        self.positions = positions
        self.doorbell = doorbell
        self.entry = entry
        self.pool = pool
        self.batch = batch
        self.quantum = quantum
        self.cap = cap
        self.in_down: Link | None = None
        self.in_up: Link | None = None
        self.out_down: Link | None = None
        self.out_up: Link | None = None
        self.metrics = StageMetrics()
        self.profile_dir: str | None = None  # set by the runtime to profile this thread
        self.soon: deque[tuple[Route, FrameProcessor, Callable[..., object], tuple]] = deque()
        self.kernels: list[Callable[[Batch], None] | None] = [None] * len(positions)
        self.queued = [False] * len(positions)
        self.batching = False  # this pass took MIN_BATCH data frames or more
        self._system_handled = 0  # system frames this pass handled, wherever it met them
        self._down: list[list[Frame]] = [[] for _ in positions]
        self._up: list[list[Frame]] = [[] for _ in positions]
        # The list _one_by_one is delivering, and how far it got (for _purge).
        self._current: list[Frame] | None = None
        self._current_index = 0
        self._running = True

    # -- sending (called by this stage's processors, on this thread) -------------------------

    def link_to(
        self, position: int, direction: Direction, route: Route, proc: FrameProcessor
    ) -> Push:
        """How a call's processor next to ``position`` (``proc`` there) pushes to it: a
        position called per frame gets the frame at once (depth first, as a call); one with
        a batch kernel (see ``queued``) gets it in its queue for the sweep while the stage
        is ``batching``, and at once otherwise."""
        k = position - self.positions.start
        if not self.queued[k]:
            return partial(deliver, proc, direction)
        append = (self._up if direction else self._down)[k].append

        def push(frame: Frame) -> None:
            if self.batching:
                frame._call = route
                append(frame)
            else:
                deliver(proc, direction, frame)

        return push

    def send_down(self, route: Route, frame: Frame) -> None:
        frame._call = route
        s = self.index
        if type(frame) is InterruptionFrame:
            route.out_epoch[s] += 1
        frame._epoch = route.out_epoch[s]
        self.out_down.send(frame)

    def send_up(self, route: Route, frame: Frame) -> None:
        frame._call = route
        self.out_up.send(frame)

    def send_down_many(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.send_down(frame._call, frame)

    def send_up_many(self, frames: list[Frame]) -> None:
        send = self.out_up.send
        for frame in frames:
            send(frame)

    def call_soon(
        self, route: Route, proc: FrameProcessor, callback: Callable[..., object], args: tuple
    ) -> None:
        """Run ``callback(*args)`` for ``proc``, of ``route``'s call, on this thread soon
        (from any thread; dropped if the call has been cancelled here by then)."""
        self.soon.append((route, proc, callback, args))
        self.doorbell.ring()

    # -- the loop ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False
        self.doorbell.ring()

    def queue_depth(self) -> int:
        """Frames waiting for this stage (approximate when read from another thread)."""
        depth = sum(len(link) for link in (self.in_down, self.in_up) if link is not None)
        if self.entry is not None:
            depth += self.entry.waiting()
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
                self._run_once()
            except Exception:  # a bug in the runtime itself: keep serving the other calls
                logger.exception("stage %s: unexpected error", self.name)
                for queue in (*self._down, *self._up):
                    queue.clear()
                self.batching = False
            if not has_work():
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

    def _system_waiting(self) -> bool:
        entry = self.entry
        if entry is not None and entry.system:
            return True
        in_down, in_up = self.in_down, self.in_up
        return (in_down is not None and len(in_down.system) > 0) or (
            in_up is not None and len(in_up.system) > 0
        )

    def _run_once(self) -> None:
        """One pass: system frames, then a batch of data swept through the stage."""
        start = time.perf_counter_ns()
        out_down, out_up = self.out_down, self.out_up
        for link in (out_down, out_up):
            if link is not None and (link.pending_data or link.pending_system):
                link.flush()
        self._system_handled = 0
        self._handle_system()
        handled = self._run_soon()
        taken = 0  # data frames: whether the pass batches
        # Data flowing upstream, unless what we already sent that way is still pending.
        in_up = self.in_up
        if in_up is not None and not (out_up is not None and out_up.pending_data):
            frames = in_up.data.pop_many(self.batch)
            if frames:
                self._up[-1].extend(self._live(frames))
                taken += len(frames)
        # Data flowing downstream, likewise.
        if not (out_down is not None and out_down.pending_data):
            if self.entry is not None:
                taken += self._take_entry()
            else:
                frames = self.in_down.data.pop_many(self.batch)
                if frames:
                    self._down[0].extend(self._fresh(frames))
                    taken += len(frames)
        self.batching = taken >= MIN_BATCH
        try:
            self._sweep()
        finally:
            self.batching = False
        handled += taken + self._system_handled
        for link in (out_down, out_up):
            if link is not None:
                link.ring_consumer()
        if handled:
            metrics = self.metrics
            metrics.frames += handled
            metrics.batches += 1
            metrics.frame_ns.add((time.perf_counter_ns() - start) // handled)

    # -- sweeping the queues through the positions -------------------------------------------

    def _sweep(self) -> None:
        """Run the positions' queues until every one is empty: downstream in order of
        position, then upstream in reverse, again while pushes refill them."""
        down, up = self._down, self._up
        last = len(down) - 1
        busy = True
        while busy:
            busy = False
            for k in range(last + 1):
                if down[k]:
                    busy = True
                    self._run_position(k, DOWN)
            for k in range(last, -1, -1):
                if up[k]:
                    busy = True
                    self._run_position(k, UP)

    def _run_position(self, k: int, direction: Direction) -> None:
        if self._system_waiting():
            self._handle_system()
        queue = (self._up if direction else self._down)[k]
        frames = queue.copy()
        queue.clear()
        if not frames:
            return
        kernel = self.kernels[k]
        if kernel is None or not self.batching:
            self._one_by_one(frames, k, direction)
        elif LIFECYCLE_FRAMES.isdisjoint(map(type, frames)):
            self._run_kernel(kernel, frames, k, direction)
        else:  # lifecycle frames go one by one, between runs of the rest
            p = self.positions.start + k
            run: list[Frame] = []
            for frame in frames:
                if type(frame) in LIFECYCLE_FRAMES:
                    if run:
                        self._run_kernel(kernel, run, k, direction)
                        run = []
                    deliver(frame._call.processors[p], direction, frame)
                else:
                    run.append(frame)
            if run:
                self._run_kernel(kernel, run, k, direction)

    def _one_by_one(self, frames: list[Frame], k: int, direction: Direction) -> None:
        """Deliver ``frames`` one at a time, letting a system frame that arrives meanwhile
        go first (and take stale frames out of ``frames``, see :meth:`_purge`)."""
        p = self.positions.start + k
        outer = self._current, self._current_index  # a kernel's push may get here
        self._current = frames
        i = 0
        try:
            while i < len(frames):
                if self._system_waiting():  # may take stale frames out of frames[i:]
                    self._current_index = i
                    self._handle_system()
                    continue
                frame = frames[i]
                i += 1
                deliver(frame._call.processors[p], direction, frame)
        finally:
            self._current, self._current_index = outer

    def _run_kernel(
        self, kernel: Callable[[Batch], None], frames: list[Frame], k: int, direction: Direction
    ) -> None:
        p = self.positions.start + k
        try:
            kernel(Batch(frames, direction, p, self.pool, self._batch_out(k, direction)))
        except PoolExhaustedError:
            frames.clear()  # overload: the batch is dropped, and the pool counted the drop
        except Exception as error:
            where = error.__traceback__  # contain() drops it, and each call's report needs it
            for route in {frame._call: None for frame in frames}:
                error.__traceback__ = where
                contain(route.processors[p], None, error)

    def _batch_out(self, k: int, direction: Direction) -> Callable[[list[Frame]], object]:
        """Where a kernel at ``k`` pushes: as its processors' pushes go (see link_to)."""
        step = -1 if direction else 1
        n = k + step
        if 0 <= n < len(self._down):
            if self.queued[n]:
                return (self._up if direction else self._down)[n].extend
            return partial(self._one_by_one, k=n, direction=direction)
        if direction is DOWN:
            return self.send_down_many if self.out_down is not None else _emit_down_many
        return self.send_up_many if self.out_up is not None else _emit_up_many

    def _purge(self, route: Route, everything: bool) -> None:
        """Drop ``route``'s frames queued in this stage: the interruptible ones after an
        interruption, all of them after a cancel."""

        def stale(frame: Frame) -> bool:
            return frame._call is route and (everything or getattr(frame, "interruptible", False))

        def drop_from(frames: list[Frame], start: int = 0) -> None:
            kept = []
            for frame in frames[start:]:
                if stale(frame):
                    frame.release()
                else:
                    kept.append(frame)
            self._count_stale(route, len(frames) - start - len(kept))
            frames[start:] = kept

        for queue in (*self._down, *self._up):
            drop_from(queue)
        if self._current is not None:  # what _one_by_one has still to deliver
            drop_from(self._current, self._current_index)

    def _count_stale(self, route: Route, dropped: int) -> None:
        self.metrics.dropped_stale += dropped
        route.dropped[self.index] += dropped

    def _handle_system(self) -> None:
        """Handle every system frame waiting, from any direction (counted in the pass's
        ``_system_handled``: a sweep calls this too, between frames)."""
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
        self._system_handled += handled

    def _run_soon(self) -> int:
        """Run the callbacks other threads handed to this stage's processors."""
        soon = self.soon
        done = 0
        while soon:
            route, proc, callback, args = soon.popleft()
            if route.done[self.index]:
                continue  # cancelled meanwhile
            try:
                callback(*args)
            except Exception as error:
                contain(proc, None, error)
            done += 1
        return done

    # -- frames arriving -----------------------------------------------------------------------

    def _fresh(self, frames: list[Frame]) -> list[Frame]:
        """Frames from the previous stage, less those of calls cancelled here and the
        interruptible ones sent before an interruption that has since come through."""
        s = self.index
        kept = []
        for frame in frames:
            route = frame._call
            if route.done[s]:
                frame.release()
                continue
            if frame._epoch < route.in_epoch[s] and getattr(frame, "interruptible", False):
                frame.release()
                self._count_stale(route, 1)
                continue
            kept.append(frame)
        return kept

    def _live(self, frames: list[Frame]) -> list[Frame]:
        """Frames from the next stage, less those of calls cancelled here."""
        s = self.index
        kept = []
        for frame in frames:
            if frame._call.done[s]:
                frame.release()
            else:
                kept.append(frame)
        return kept

    def _from_upstream_stage(self, frame: Frame) -> None:
        """A system frame travelling downstream, from the previous stage."""
        route = frame._call
        s = self.index
        if route.done[s]:
            return
        kind = type(frame)
        if kind is InterruptionFrame:
            route.in_epoch[s] = frame._epoch
            self._purge(route, everything=False)
        elif kind is CancelFrame:
            self._purge(route, everything=True)
        deliver(route.processors[self.positions.start], DOWN, frame)
        if kind is CancelFrame:
            route.done[s] = True

    def _from_downstream_stage(self, frame: Frame) -> None:
        """A system frame travelling upstream, from the next stage."""
        route = frame._call
        if not route.done[self.index]:
            deliver(route.processors[self.positions.stop - 1], UP, frame)

    def _enter_system(self, frame: Frame) -> None:
        """A system frame (or an ``end()`` request) sent into the pipeline from outside."""
        route = frame._call
        if route.done[0]:
            return
        kind = type(frame)
        if kind is EndFrame:  # runs after the call's queued input: see _take_entry
            route.end_requested = frame
            if not route.scheduled:
                self.entry.schedule(route)
            return
        if kind is InterruptionFrame:
            self._purge(route, everything=False)
        elif kind is CancelFrame:
            route.input_closed = True
            route.end_requested = None
            _discard(route)
            self._purge(route, everything=True)
        deliver(route.processors[0], DOWN, frame)
        if kind is CancelFrame:
            route.done[0] = True

    def _take_entry(self) -> int:
        """Queue up to ``quantum`` frames from each ready call, round-robin, until the
        ready calls are drained or ``cap`` frames are queued; returns how many it queued."""
        entry = self.entry
        ready = entry.ready
        queue = self._down[0]
        quantum = self.quantum
        taken = 0
        cap = self.cap
        while ready and taken < cap:
            try:
                route = ready.popleft()
            except IndexError:
                break
            # System frames first: those sent before this call's data (its StartFrame,
            # above all) may have arrived after _handle_system last looked. They were
            # appended before the call was scheduled, so popping the call makes them seen.
            if entry.system:
                self._handle_system()
            if route.input_closed:
                _discard(route)
            else:
                frames = route.input.pop_many(quantum)
                route.input_taken()
                queue += frames
                taken += len(frames)
            if len(route.input):
                ready.append(route)
            else:
                end = route.end_requested
                if end is not None and not route.input_closed:
                    route.input_closed = True
                    route.end_requested = None  # it points back to the route: no cycle
                    queue.append(end)
                    taken += 1
                # Unschedule, then look again: a producer that published just before we
                # cleared the flag saw it set and did not schedule the call.
                route.scheduled = False
                if len(route.input) and not route.scheduled:
                    entry.schedule(route)
        return taken


class Shard:
    """One copy of a pipeline's threads: a chain of stages, stage ``s`` running positions
    ``groups[s]``, linked in both directions, and the entry the calls' frames come in by.

    Each call on the shard has a :class:`Route` through it. ``pool`` is the runtime's slab
    pool; ``interruption_ns`` (time for an interruption to sweep the pipeline) is written by
    the last stage thread only; ``on_call_finished(call_id)`` is called on a stage thread
    as each call on the shard ends.
    """

    def __init__(
        self,
        name: str,
        groups: list[range],
        pool: SlabPool,
        on_call_finished: Callable[[int], None],
        *,
        wait_strategy: str | None = None,
        link_capacity: int = 1024,
        profile_dir: str | None = None,
    ) -> None:
        self.name = name
        self.pool = pool
        self.on_call_finished = on_call_finished
        self.interruption_ns = Histogram()
        doorbells = [Doorbell(wait_strategy) for _ in groups]
        self.entry = Entry(doorbells[0])
        self.stages = [
            Stage(f"{name}-s{s}", s, positions, doorbells[s], self.entry if s == 0 else None, pool)
            for s, positions in enumerate(groups)
        ]
        for left, right in zip(self.stages, self.stages[1:], strict=False):
            left.out_down = right.in_down = Link(link_capacity, right.doorbell)
            right.out_up = left.in_up = Link(link_capacity, left.doorbell)
        for stage in self.stages:
            stage.profile_dir = profile_dir
            stage.start()

    def stop(self, timeout: float) -> None:
        """Stop the stage threads and join them."""
        for stage in self.stages:
            stage.stop()
        for stage in self.stages:
            stage.join(timeout)


def _emit_down_many(frames: list[Frame]) -> None:
    """Frames leaving the pipeline downstream, each to its call's output."""
    for frame in frames:
        frame._call.emit_down(frame)


def _emit_up_many(frames: list[Frame]) -> None:
    for frame in frames:
        frame._call.emit_up(frame)


def _discard(route: Route) -> None:
    """Drop a closed call's queued input (the slabs go back to the pool)."""
    while frames := route.input.pop_many(route.input.capacity):
        for frame in frames:
            frame.release()
