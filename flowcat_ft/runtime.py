"""The runtime: stage threads for each pipeline, the slab pool, GC policy and metrics.

Embedding from plain threads, no asyncio needed::

    with Runtime() as runtime:
        call = runtime.open_call(Pipeline([MyProcessor]))
        call.push_audio(pcm_bytes, sample_rate=16000)
        call.end()
        for frame in call.frames(timeout=5):
            ...
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from functools import partial
from typing import TypeVar

from flowcat_ft.call import Call, OutputCallback
from flowcat_ft.cpu import CpuAccount
from flowcat_ft.frames import Direction, StartFrame
from flowcat_ft.gcpolicy import GcPolicy
from flowcat_ft.loops import EventLoopThread, LoopThread, running_loops
from flowcat_ft.observers import Observed, Observer
from flowcat_ft.pipeline import Pipeline, fuse
from flowcat_ft.processor import FrameProcessor, batch_kernel
from flowcat_ft.slabs import SLAB_BYTES, SlabPool
from flowcat_ft.stage import Shard, Stage
from flowcat_ft.waiting import Doorbell

logger = logging.getLogger("flowcat_ft")

T = TypeVar("T")


class RuntimeFullError(RuntimeError):
    """The runtime already carries its maximum number of calls."""


class PipelineRunner:
    """One shard of a pipeline: its stage threads (a :class:`~flowcat_ft.stage.Shard`),
    and the calls running on them, which it opens and wires to the stages.

    ``active`` (calls running here) and ``idle_since`` (when the last of them ended) are
    guarded by the runtime's lock.
    """

    def __init__(
        self, runtime: Runtime, pipeline: Pipeline, groups: list[range], name: str
    ) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.active = 0
        self.idle_since = time.monotonic()
        self._classes: list[type[FrameProcessor]] | None = None  # the first call's
        self.shard = Shard(
            name,
            groups,
            runtime.pool,
            partial(runtime._call_finished, self),
            wait_strategy=runtime.wait_strategy,
            link_capacity=runtime.link_capacity,
            profile_dir=runtime.profile_dir,
        )

    def open_call(
        self,
        processors: list[FrameProcessor],
        on_output: OutputCallback | None,
        start_frame: StartFrame,
        observers: tuple[Observer, ...] = (),
    ) -> Call:
        rt = self.runtime
        call = Call(self.shard, rt, processors, on_output, rt.input_capacity, rt.output_capacity)
        self._choose_kernels(processors, observers)
        self._wire(call, observers)
        call._send_system(start_frame)
        return call

    def _choose_kernels(
        self, processors: list[FrameProcessor], observers: tuple[Observer, ...]
    ) -> None:
        """Let each stage hand a position's frames to its class's batch kernel, while
        every call has a processor of that class there and no call is observed (observers
        see each push, which a kernel does not make). Runs under the runtime's lock,
        before the call's first frame is sent."""
        classes = [type(proc) for proc in processors]
        stages = self.shard.stages
        if self._classes is None:
            self._classes = classes
            for stage in stages:
                for k, p in enumerate(stage.positions):
                    stage.kernels[k] = batch_kernel(classes[p])
                    stage.queued[k] = stage.kernels[k] is not None
        for stage in stages:
            for k, p in enumerate(stage.positions):
                if observers or classes[p] is not self._classes[p]:
                    stage.kernels[k] = None

    def _wire(self, call: Call, observers: tuple[Observer, ...]) -> None:
        """Link each processor's pushes to its neighbours: on the same stage, straight to a
        neighbour called per frame, or into the queue of a neighbour with a batch kernel
        (which the stage sweeps next); across stages, through the link; at either end, to
        the call's output."""
        route = call.route
        processors = route.processors
        last = len(processors) - 1
        for stage in self.shard.stages:
            first, end = stage.positions.start, stage.positions.stop - 1
            soon = partial(stage.call_soon, route)
            for i in stage.positions:
                if i < end:
                    down = stage.link_to(i + 1, Direction.DOWNSTREAM, route, processors[i + 1])
                elif i == last:
                    down = route.emit_down
                else:
                    down = partial(stage.send_down, route)
                if i > first:
                    up = stage.link_to(i - 1, Direction.UPSTREAM, route, processors[i - 1])
                elif i == 0:
                    up = route.emit_up
                else:
                    up = partial(stage.send_up, route)
                if observers:
                    proc = processors[i]
                    down = Observed(down, call, proc, Direction.DOWNSTREAM, observers)
                    up = Observed(up, call, proc, Direction.UPSTREAM, observers)
                processors[i]._wire(call, down, up, soon)


class Runtime:
    """Runs pipelines for many calls on a few threads.

    ``threads`` is how many threads a pipeline gets (default: the number of cores this
    process may use), as shards of one or more stages each (see :meth:`_start_shards`),
    shared by the calls on every pipeline equal to it (see
    :attr:`~flowcat_ft.pipeline.Pipeline.template`);
    ``slabs`` is the size of the audio slab pool;
    ``wait_strategy`` is how idle stage threads wait (see :mod:`flowcat_ft.waiting`);
    ``gc_policy`` is how garbage is collected (default: a new :class:`GcPolicy`;
    :class:`~flowcat_ft.gcpolicy.InterpreterGc` leaves the collector as it is);
    ``max_calls`` caps concurrent calls (:class:`RuntimeFullError` past it);
    ``input_capacity`` is each call's input ring (frames before :meth:`Call.push` waits);
    ``output_capacity`` bounds the output a :meth:`Call.frames` reader may leave unread
    (data frames past it are dropped and counted; None: unbounded);
    ``idle_shard_timeout`` stops a pipeline's stage threads once none of its shards has
    had a call for that many seconds (a later call starts new ones; None: never);
    ``profile_dir`` profiles every stage thread with pyinstrument into that directory
    (this turns the GIL on: see :mod:`flowcat_ft.profiling`).

    Threading contract: :meth:`open_call`, :meth:`event_loop`, :meth:`shared`,
    :meth:`metrics` and :meth:`stop` may be called from any thread; ``_calls``,
    ``_runners`` and ``_io_loops`` are guarded by ``_lock`` (:meth:`open_call` reads the
    number of calls without it too, to refuse early, and again under it), ``_shared`` by
    ``_shared_lock`` (taken before ``_lock``, never after, so a factory may take ``_lock``
    in :meth:`event_loop`). The housekeeper thread samples stage rates, ticks the GC
    policy, samples the CPU time of each thread and worker process (``cpu``: see
    :mod:`flowcat_ft.cpu`), stops idle shards, and now and then wakes idle stage threads
    and every running event-loop thread (the transports' as well as its own), so that
    frames other threads freed for them (and their slabs) are freed within a second or so
    on 3.13t (see :meth:`EventLoopThread.wake <flowcat_ft.loops.EventLoopThread.wake>`).
    """

    def __init__(
        self,
        *,
        threads: int | None = None,
        slabs: int = 4096,
        slab_bytes: int = SLAB_BYTES,
        wait_strategy: str | None = None,
        gc_policy: GcPolicy | None = None,
        max_calls: int | None = None,
        input_capacity: int = 64,
        output_capacity: int | None = None,
        link_capacity: int = 1024,
        housekeeping_interval: float = 0.5,
        idle_shard_timeout: float | None = 30.0,
        profile_dir: str | None = None,
    ) -> None:
        self.threads = threads or os.process_cpu_count() or 1
        self.pool = SlabPool(slabs, slab_bytes)
        self.wait_strategy = wait_strategy
        Doorbell(wait_strategy)  # validate the name now, not on first use
        self.gc = gc_policy if gc_policy is not None else GcPolicy()
        self.max_calls = max_calls
        self.input_capacity = input_capacity
        self.output_capacity = output_capacity
        self.link_capacity = link_capacity
        self.housekeeping_interval = housekeeping_interval
        self.idle_shard_timeout = idle_shard_timeout
        self.profile_dir = profile_dir
        self._lock = threading.Lock()
        self._runners: dict[tuple[object, ...], list[PipelineRunner]] = {}  # by template
        self._pipeline_ids = itertools.count()  # names stage threads: flowcat-p<id>.<shard>
        self._calls: dict[int, Call] = {}
        self._calls_ended = 0
        self._idle_since = time.monotonic()
        self._io_loops: list[EventLoopThread] = []
        self._next_io = itertools.count()
        self._shared_lock = threading.Lock()
        self._shared: dict[Hashable, object] = {}
        self._started = False
        self._stopping = threading.Event()
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="flowcat-housekeeper", daemon=True
        )
        self.cpu = CpuAccount(_thread_kind)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Runtime:
        """Start the housekeeper and apply the GC policy. Stage threads start per pipeline."""
        if not self._started:
            self._started = True
            self.gc.start()
            self._housekeeper.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every call still running, then stop all threads."""
        self._stopping.set()  # open_call refuses from here on (it looks under the lock)
        with self._lock:
            calls = list(self._calls.values())
        for call in calls:
            call.cancel("runtime stopping")
        deadline = time.monotonic() + timeout
        for call in calls:
            call.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            runners = [runner for shards in self._runners.values() for runner in shards]
            self._runners.clear()
        for runner in runners:
            runner.shard.stop(timeout)
        with self._lock:
            io_loops, self._io_loops = self._io_loops, []
        for io in io_loops:
            io.stop(timeout)
        if self._housekeeper.is_alive():
            self._housekeeper.join(timeout)
        self.gc.stop()

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def event_loop(self) -> EventLoopThread:
        """One of the runtime's event-loop threads (one per core, started on first use,
        handed out in turn), for processors' network I/O."""
        with self._lock:
            if not self._io_loops:
                self._io_loops = [EventLoopThread(f"flowcat-io-{i}") for i in range(self.threads)]
            return self._io_loops[next(self._next_io) % len(self._io_loops)]

    def shared(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The object kept under ``key`` for every call on this runtime (a worker process
        the calls share, say), made by ``factory()`` on first use and kept as long as the
        runtime. Safe from any thread: ``factory`` runs once, and may call
        :meth:`event_loop`. Processors reach it as ``self.call.shared(key, factory)``."""
        with self._shared_lock:
            if key not in self._shared:
                self._shared[key] = factory()
            return self._shared[key]

    # -- calls -----------------------------------------------------------------------------

    def open_call(
        self,
        pipeline: Pipeline,
        on_output: OutputCallback | None = None,
        *,
        start_frame: StartFrame | None = None,
        observers: Sequence[Observer] = (),
    ) -> Call:
        """Start a call on ``pipeline``; see :class:`~flowcat_ft.call.Call` for its use.

        ``observers`` see every frame the call's processors push
        (:mod:`flowcat_ft.observers`)."""
        if not self._started:
            self.start()
        self._check_open()  # before running the factories, which may be slow
        # The factories are user code: run them outside the lock, which stage threads take
        # when a call ends.
        processors = pipeline.make_processors()
        with self._lock:
            self._check_open()
            key = pipeline.template  # equal pipelines share shards, whichever object
            shards = self._runners.get(key)
            if shards is None:
                costs = [float(proc.cost) for proc in processors]
                shards = self._runners[key] = self._start_shards(pipeline, costs)
            runner = min(shards, key=lambda shard: shard.active)
            start = start_frame or StartFrame()
            call = runner.open_call(processors, on_output, start, tuple(observers))
            runner.active += 1
            self._calls[call.id] = call
        return call

    def _check_open(self) -> None:
        """Raise unless the runtime can take one more call (exact under ``_lock``)."""
        if self._stopping.is_set():
            raise RuntimeError("the runtime is stopping")
        if self.max_calls is not None and len(self._calls) >= self.max_calls:
            raise RuntimeFullError(f"the runtime is at its limit of {self.max_calls} calls")

    def _start_shards(self, pipeline: Pipeline, costs: list[float]) -> list[PipelineRunner]:
        """Start a pipeline's threads: ``shards`` copies of a chain of ``threads`` stages.

        By default a pipeline runs whole on one thread per shard, one shard per core: a
        call stays on its shard, so its frames cross no thread on the way through, and
        calls spread over the cores. Splitting a shard into stages (``threads``) pays a
        hand-off per stage per frame; it wins where one stage is heavy, or where a stage
        batches work across the calls it sees (Silero VAD). Stages are balanced by
        ``costs``, read from a call's processors (a factory such as a lambda cannot say
        what it makes).
        """
        stages = pipeline.threads or 1
        shards = pipeline.shards or max(1, self.threads // stages)
        groups = fuse(costs, stages)
        index = next(self._pipeline_ids)
        return [
            PipelineRunner(self, pipeline, groups, f"flowcat-p{index}.{shard}")
            for shard in range(shards)
        ]

    @property
    def calls(self) -> list[Call]:
        """The calls running now."""
        with self._lock:
            return list(self._calls.values())

    def _call_finished(self, runner: PipelineRunner, call_id: int) -> None:
        with self._lock:
            if self._calls.pop(call_id, None) is not None:
                runner.active -= 1
                if not runner.active:
                    runner.idle_since = time.monotonic()
            self._calls_ended += 1
            if not self._calls:
                self._idle_since = time.monotonic()

    # -- housekeeping and metrics ------------------------------------------------------------

    def _runners_now(self) -> list[PipelineRunner]:
        with self._lock:
            return [runner for shards in self._runners.values() for runner in shards]

    def _stages(self) -> Iterator[Stage]:
        for runner in self._runners_now():
            yield from runner.shard.stages

    @property
    def stages(self) -> list[Stage]:
        """The stage threads running now, for monitors: their ``name``, ``metrics`` and
        ``queue_depth()`` may be read from any thread."""
        return list(self._stages())

    def _housekeep(self) -> None:
        last = time.monotonic()
        counts: dict[Stage, int] = {}
        while not self._stopping.wait(self.housekeeping_interval):
            now = time.monotonic()
            before, counts = counts, {}
            for stage in self._stages():
                frames = counts[stage] = stage.metrics.frames
                stage.metrics.rate = (frames - before.get(stage, frames)) / (now - last)
                # The second line of defence against lost wake-ups; it also has a parked
                # stage thread free what other threads freed for it (see EventLoopThread.wake).
                stage.doorbell.nudge()
            last = now
            with self._lock:
                active = len(self._calls)
                idle_for = now - self._idle_since if not active else 0.0
            for io in running_loops():  # the transports' loops as well as ours
                io.wake()
            self.gc.tick(active, idle_for)
            self.cpu.sample(active)
            self._stop_idle_shards(now)

    def _stop_idle_shards(self, now: float) -> None:
        """Stop the threads of pipelines none of whose shards has had a call for
        ``idle_shard_timeout`` seconds. Under the lock, no call can be opened on a shard
        once it is taken out of ``_runners``; the threads are joined outside it."""
        timeout = self.idle_shard_timeout
        if timeout is None:
            return
        with self._lock:
            idle = [
                key
                for key, shards in self._runners.items()
                if all(not r.active and now - r.idle_since >= timeout for r in shards)
            ]
            runners = [runner for key in idle for runner in self._runners.pop(key)]
        for runner in runners:
            runner.shard.stop(timeout=5.0)

    def metrics(self) -> dict[str, object]:
        """A snapshot of what the runtime is doing, safe to take while it runs."""
        pipelines = []
        for runner in self._runners_now():
            shard = runner.shard
            pipelines.append(
                {
                    "shard": shard.name,
                    "calls": runner.active,
                    "processors": len(runner.pipeline),
                    "interruption": shard.interruption_ns.snapshot(),
                    "stages": [
                        {
                            "thread": stage.name,
                            "positions": [stage.positions.start, stage.positions.stop],
                            "queue_depth": stage.queue_depth(),
                            "frames": stage.metrics.frames,
                            "frames_per_s": round(stage.metrics.rate, 1),
                            "dropped_stale": stage.metrics.dropped_stale,
                            "frame_time": stage.metrics.frame_ns.snapshot(),
                            "parks": stage.doorbell.parks,
                            "missed_wakeups": stage.doorbell.missed_wakeups,
                        }
                        for stage in shard.stages
                    ],
                }
            )
        with self._lock:
            calls = [
                {
                    "id": c.id,
                    "frames_in": c.frames_in,
                    "frames_out": c.frames_out,
                    "dropped": sum(c.dropped),
                }
                for c in self._calls.values()
            ]
            ended = self._calls_ended
        return {
            "calls": {"active": len(calls), "ended": ended, "per_call": calls},
            "slabs": {
                "capacity": self.pool.capacity,
                "in_use": self.pool.in_use,
                "drops": self.pool.drops,
                "waits": self.pool.waits,
            },
            "gc": self.gc.snapshot(),
            "pipelines": pipelines,
            "cpu": self.cpu.snapshot(),
        }


def _thread_kind(thread: threading.Thread) -> str:
    """What a thread of the process is, for CPU accounting."""
    if isinstance(thread, Stage):
        return "stage"
    if isinstance(thread, LoopThread):
        return "event loop"
    return "other"
