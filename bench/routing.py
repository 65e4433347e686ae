"""Routing cost: microseconds per frame per processor hop through a no-op pipeline.

A pipeline of 7 pass-through processors runs on a runtime with its default settings (one
stage thread per core). For 1, 100 and 1,000 concurrent calls, feeder threads (``--feeders``,
default 1; each owns a share of the calls) push a fixed number of small text frames, spread
round-robin over the calls and as fast as the calls' input rings take them. The output
callback counts the frames leaving the pipeline; the time from the first push to the last
frame out, divided by ``frames * 7``, is the cost of one hop. Frames are made before the
clock starts. Each call count runs ``--repeats`` times on a fresh runtime; the fastest run
(the one least disturbed by other work on the machine) is reported. Target: at most 2 µs
per hop on 3.13t.
"""

from __future__ import annotations

import argparse
import threading
import time

from bench._common import finish, header, parser, table
from flowcat_ft import Call, Direction, Frame, FrameProcessor, Pipeline, Runtime, TextFrame

PROCESSORS = 7
CALL_COUNTS = (1, 100, 1000)
TARGET_US = 2.0


class PassThrough(FrameProcessor):
    """Passes every frame on unchanged (the base class's default ``process``)."""


class Sink:
    """Counts text frames leaving the pipeline; ``done`` is set once ``target`` have.

    Threading contract: :meth:`on_output` runs on the last stage thread of each of the
    pipeline's shards, so ``count`` is written under ``_lock``.
    """

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def expect(self, frames: int) -> None:
        """Reset for a run of ``frames`` frames (call while nothing is in flight)."""
        self.done.clear()
        self.target = self.count + frames

    def on_output(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is TextFrame:
            with self._lock:
                self.count += 1
                if self.count >= self.target:
                    self.done.set()


def feed(calls: list[Call], frames: list[TextFrame], start: threading.Barrier) -> None:
    """Push ``frames`` round-robin over ``calls`` (this thread is their only producer)."""
    start.wait()
    n = len(calls)
    for i, frame in enumerate(frames):
        calls[i % n].push(frame)


def run_once(calls: list[Call], sink: Sink, frames: int, feeders: int) -> float:
    """Push ``frames`` frames through ``calls`` from ``feeders`` threads; return seconds."""
    feeders = min(feeders, len(calls))
    shares = [calls[f::feeders] for f in range(feeders)]
    sizes = [frames // feeders + (f < frames % feeders) for f in range(feeders)]
    batches = [[TextFrame("x") for _ in range(size)] for size in sizes]
    sink.expect(frames)
    start = threading.Barrier(feeders + 1)
    threads = [
        threading.Thread(target=feed, args=(share, batch, start), name=f"feeder-{f}")
        for f, (share, batch) in enumerate(zip(shares, batches, strict=True))
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    if not sink.done.wait(timeout=120):
        raise RuntimeError(f"only {sink.count} of {sink.target} frames came out")
    elapsed = time.perf_counter() - began
    for thread in threads:
        thread.join()
    return elapsed


def measure(call_count: int, frames: int, feeders: int, repeats: int) -> float:
    """Seconds, best of ``repeats`` runs, to route ``frames`` frames over ``call_count`` calls."""
    pipeline = Pipeline([PassThrough] * PROCESSORS)
    sink = Sink()
    with Runtime() as runtime:
        calls = [runtime.open_call(pipeline, on_output=sink.on_output) for _ in range(call_count)]
        run_once(calls, sink, max(call_count, frames // 20), feeders)  # warm up
        times = [run_once(calls, sink, frames, feeders) for _ in range(repeats)]
        for call in calls:
            call.end()
        for call in calls:
            call.wait(10)
    return min(times)


def main(args: argparse.Namespace) -> None:
    header("routing", args)
    frames = args.frames or (100_000 if args.quick else 500_000)
    repeats = args.repeats or (3 if args.quick else 5)
    print(
        f"{PROCESSORS} pass-through processors, {frames:,} frames per run, "
        f"{args.feeders} feeder thread(s), best of {repeats} runs\n"
    )
    rows = []
    us_per_hop: dict[str, float] = {}
    frames_per_s: dict[str, float] = {}
    for call_count in CALL_COUNTS:
        seconds = measure(call_count, frames, args.feeders, repeats)
        us_per_hop[str(call_count)] = round(seconds / (frames * PROCESSORS) * 1e6, 3)
        frames_per_s[str(call_count)] = round(frames / seconds)
        rows.append((call_count, seconds, frames / seconds, us_per_hop[str(call_count)]))
    print(table(("calls", "seconds", "frames/s", "us/hop"), rows))
    worst = max(us_per_hop.values())
    verdict = "meets" if worst <= TARGET_US else "misses"
    print(f"\nworst {worst:.2f} us/hop: {verdict} the target of <= {TARGET_US} us/hop")
    finish(
        {
            "bench": "routing",
            "processors": PROCESSORS,
            "frames": frames,
            "feeders": args.feeders,
            "us_per_hop": us_per_hop,
            "frames_per_s": frames_per_s,
            "target_us_per_hop": TARGET_US,
        },
        args,
    )


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--frames", type=int, help="frames per run (default 500,000; quick 100,000)")
    p.add_argument("--repeats", type=int, help="runs per call count (default 5; quick 3)")
    p.add_argument("--feeders", type=int, default=1, help="feeder threads (default 1)")
    main(p.parse_args())
