"""Frames in rounds through one stage thread, timed by that thread's CPU clock: what
``bench.routing`` and ``bench.batching`` share.

A round gives one frame to each of a list of calls through an
:class:`~flowcat_ft.call.Inbox` flushed by hand, so the stage finds the whole round at
once; the next round starts when the round has come out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flowcat_ft import Direction, Frame, Pipeline, Runtime
from flowcat_ft.call import Inbox


class Sink:
    """Counts frames of type ``kind`` leaving the pipeline; ``done`` is set once
    ``target`` have. Runs on the one stage thread only."""

    def __init__(self, kind: type[Frame]) -> None:
        self.kind = kind
        self.count = 0
        self.target = 0
        self.done = threading.Event()

    def expect(self, frames: int) -> None:
        self.done.clear()
        self.target = self.count + frames

    def on_output(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is self.kind:
            self.count += 1
            if self.count >= self.target:
                self.done.set()


def stage_cpu_per_frame(
    runtime: Runtime,
    pipeline: Pipeline,
    calls: int,
    out: type[Frame],
    make: Callable[[], Frame],
    rounds: int,
    runs: int = 3,
) -> float:
    """Open ``calls`` calls on ``pipeline`` (one shard: the runtime's one stage thread)
    and give them ``rounds`` rounds of frames from ``make()``, a round ending when as many
    frames of type ``out`` have come out; the stage thread's CPU µs per frame, the least
    of ``runs`` runs (the ones least disturbed by other work). The calls end after."""
    sink = Sink(out)
    opened = [runtime.open_call(pipeline, sink.on_output) for _ in range(calls)]
    (stage,) = [t for t in threading.enumerate() if t.name.startswith("flowcat-p")]
    clock = time.pthread_getcpuclockid(stage.ident)
    inbox = Inbox(lambda: None)
    best = float("inf")
    for _ in range(runs):
        began = time.clock_gettime(clock)  # frames are made here, on another thread's clock
        for _ in range(rounds):
            sink.expect(calls)
            for call in opened:
                inbox.push(call, make())
            inbox.flush()
            if not sink.done.wait(30):
                raise RuntimeError(f"only {sink.count} of {sink.target} frames came out")
        best = min(best, (time.clock_gettime(clock) - began) / (rounds * calls) * 1e6)
    for call in opened:
        call.end()
    for call in opened:
        call.wait(10)
    return best
