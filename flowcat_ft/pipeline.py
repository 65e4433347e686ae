"""Pipelines: the processors a call's frames flow through, and how they map onto threads.

A pipeline is a template. Its items are processor *factories* (a
:class:`~flowcat_ft.processor.FrameProcessor` subclass, or any callable that returns a new
processor), because every call gets its own instances. Nested pipelines are flattened;
a :class:`ParallelPipeline` fans frames out to branches and merges what they push.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Union

from flowcat_ft.dispatch import deliver
from flowcat_ft.frames import Direction, Frame
from flowcat_ft.processor import LIFECYCLE_FRAMES, CallContext, FrameProcessor, Push, Soon

ProcessorFactory = Callable[[], FrameProcessor]
Item = Union[ProcessorFactory, "Pipeline", "ParallelPipeline"]


class Pipeline:
    """A chain of processors, from the transport's input to its output.

    The runtime runs ``shards`` copies of the pipeline (default: one per core, divided by
    ``threads``), each call on one of them; each copy runs on ``threads`` stage threads
    (default 1, never more than there are processors), neighbouring processors fused onto
    a thread in order, balanced by their ``cost``.

    Pipelines compare by :attr:`template`: two pipelines made alike (the same factories, in
    order, and the same ``threads`` and ``shards``) are equal, and the runtime runs their
    calls on the same stage threads.
    """

    def __init__(
        self, items: Sequence[Item], *, threads: int | None = None, shards: int | None = None
    ) -> None:
        self.factories: list[ProcessorFactory] = []
        for item in items:
            if isinstance(item, Pipeline):
                self.factories.extend(item.factories)
            elif isinstance(item, FrameProcessor):
                raise TypeError(
                    f"{item!r} is an instance; pass its class or a factory "
                    "(each call gets its own processors)"
                )
            elif callable(item):
                self.factories.append(item)
            else:
                raise TypeError(f"{item!r} is not a processor factory or pipeline")
        if not self.factories:
            raise ValueError("a pipeline needs at least one processor")
        if (threads is not None and threads < 1) or (shards is not None and shards < 1):
            raise ValueError("threads and shards must be at least 1")
        self.threads = threads
        self.shards = shards

    def __len__(self) -> int:
        return len(self.factories)

    @property
    def template(self) -> tuple[object, ...]:
        """What makes two pipelines the same: their factories, ``threads`` and ``shards``."""
        return (tuple(self.factories), self.threads, self.shards)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pipeline):
            return NotImplemented
        return self.template == other.template

    def __hash__(self) -> int:
        return hash(self.template)

    def make_processors(self) -> list[FrameProcessor]:
        """One call's processors, fresh from the factories."""
        processors = []
        for factory in self.factories:
            proc = factory()
            if not isinstance(proc, FrameProcessor):
                raise TypeError(f"{factory!r} made {proc!r}, which is not a FrameProcessor")
            processors.append(proc)
        return processors


def fuse(costs: Sequence[float], threads: int) -> list[range]:
    """Split positions ``0..len(costs)`` into at most ``threads`` contiguous groups of
    near-equal total cost."""
    n = len(costs)
    groups = max(1, min(threads, n))
    total = sum(costs)
    bounds = [0]
    acc = 0.0
    for i, cost in enumerate(costs):
        acc += cost
        remaining_groups = groups - len(bounds)
        remaining_items = n - (i + 1)
        if remaining_groups > 0 and (
            acc >= total * len(bounds) / groups or remaining_items == remaining_groups
        ):
            bounds.append(i + 1)
    bounds.append(n)
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


class ParallelPipeline:
    """Branches that each see every frame; what they push is merged, in the order pushed.

    Lifecycle frames pass through every branch (so each processor's hooks run) and leave
    the parallel pipeline once. All branches run on the same stage thread, so its cost is
    the sum of theirs.

    It is the factory of its own per-call processor, and compares by its branches (so
    pipelines holding alike parallel pipelines are equal too).
    """

    def __init__(self, *branches: Sequence[Item]) -> None:
        if not branches:
            raise ValueError("a parallel pipeline needs at least one branch")
        self.branches = [Pipeline(branch) for branch in branches]

    def __call__(self) -> FrameProcessor:
        """One call's branches, fresh from their factories."""
        return _Parallel([[f() for f in b.factories] for b in self.branches])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParallelPipeline):
            return NotImplemented
        return self.branches == other.branches

    def __hash__(self) -> int:
        return hash(tuple(self.branches))


class _Parallel(FrameProcessor):
    """One call's instance of a :class:`ParallelPipeline`."""

    def __init__(self, branches: list[list[FrameProcessor]]) -> None:
        super().__init__(name="ParallelPipeline")
        self.branches = branches
        self.cost = sum(proc.cost for branch in branches for proc in branch)

    def _wire(self, call: CallContext, down: Push, up: Push, soon: Soon | None = None) -> None:
        super()._wire(call, down, up, soon)
        for branch in self.branches:
            last = len(branch) - 1
            for i, proc in enumerate(branch):
                if i < last:
                    down = partial(deliver, branch[i + 1], Direction.DOWNSTREAM)
                else:
                    down = self._merge_down
                up = partial(deliver, branch[i - 1], Direction.UPSTREAM) if i else self._merge_up
                proc._wire(call, down, up, soon)

    def _unwire(self, call: CallContext) -> None:
        super()._unwire(call)
        for branch in self.branches:
            for proc in branch:
                proc._unwire(call)

    def _merge_down(self, frame: Frame) -> None:
        if type(frame) not in LIFECYCLE_FRAMES:
            self._down(frame)

    def _merge_up(self, frame: Frame) -> None:
        if type(frame) not in LIFECYCLE_FRAMES:
            self._up(frame)

    def _fan_out(self, frame: Frame, direction: Direction) -> None:
        index = 0 if direction is Direction.DOWNSTREAM else -1
        for branch in self.branches:
            deliver(branch[index], direction, frame)

    def process(self, frame: Frame, direction: Direction) -> None:
        self._fan_out(frame, direction)

    def _lifecycle(self, frame: Frame, direction: Direction) -> None:
        self._fan_out(frame, direction)
        self.push(frame, direction)
