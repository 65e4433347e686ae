"""Memory per idle call, and the CPU an idle runtime uses.

A runtime (default settings) runs the 7-processor pass-through pipeline of
:mod:`bench.routing`; one call is opened and ended first, so the pipeline's stage threads
and links exist before anything is measured. Then:

1. CPU while no call exists: process CPU time over ``--seconds`` of wall time, as a
   percentage of one core;
2. bytes per idle call, from RSS: RSS (``/proc/self/statm``) before and after opening
   ``--calls`` calls and letting their start frames through, divided by the count;
3. CPU while those calls sit idle, as in 1;
4. bytes per idle call, from ``tracemalloc``: the same, in a second round of calls
   opened with tracemalloc on (it slows allocation and adds its own memory, so it is kept
   out of the RSS round); the biggest allocation sites per call are listed.

Targets: at most 25 KB per idle call, and under 2% of one core for an idle runtime.
The bench takes about 5 s, so ``--quick`` changes nothing.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import tracemalloc
from pathlib import Path

from bench._common import ROOT, finish, header, parser, process_cpu, rss_bytes, table
from bench.routing import PROCESSORS, PassThrough
from flowcat_ft import Call, Direction, Frame, Pipeline, Runtime, StartFrame

TARGET_BYTES = 25_000
TARGET_CPU_PERCENT = 2.0
TOP_SITES = 6


class StartCounter:
    """Sets ``all_started`` once ``expected`` start frames have left the pipeline.

    Threading contract: start frames leave on the last stage thread of each of the
    pipeline's shards, so ``count`` is written under ``_lock``.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.all_started = threading.Event()
        self._lock = threading.Lock()

    def on_output(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is StartFrame:
            with self._lock:
                self.count += 1
                if self.count >= self.expected:
                    self.all_started.set()


def open_idle(runtime: Runtime, pipeline: Pipeline, count: int) -> list[Call]:
    """Open ``count`` calls and wait until each one's start frame has gone through."""
    started = StartCounter(count)
    calls = [runtime.open_call(pipeline, on_output=started.on_output) for _ in range(count)]
    if not started.all_started.wait(30):
        raise RuntimeError(f"only {started.count} of {count} calls started")
    gc.collect()
    return calls


def close(calls: list[Call]) -> None:
    for call in calls:
        call.end()
    for call in calls:
        call.wait(10)


def cpu_percent(seconds: float) -> float:
    """This process's CPU use over the next ``seconds``, in % of one core."""
    cpu, wall = process_cpu(), time.perf_counter()
    time.sleep(seconds)
    return (process_cpu() - cpu) / (time.perf_counter() - wall) * 100


def main(args: argparse.Namespace) -> None:
    header("memory", args)
    n = args.calls
    pipeline = Pipeline([PassThrough] * PROCESSORS)
    with Runtime() as runtime:
        close(open_idle(runtime, pipeline, 1))  # the pipeline's stage threads now exist
        cpu_no_calls = cpu_percent(args.seconds)

        before = rss_bytes()
        calls = open_idle(runtime, pipeline, n)
        rss_per_call = (rss_bytes() - before) / n
        cpu_idle_calls = cpu_percent(args.seconds)
        close(calls)

        tracemalloc.start()
        gc.collect()
        baseline = tracemalloc.take_snapshot()
        traced_before = tracemalloc.get_traced_memory()[0]
        calls = open_idle(runtime, pipeline, n)
        traced_per_call = (tracemalloc.get_traced_memory()[0] - traced_before) / n
        sites = tracemalloc.take_snapshot().compare_to(baseline, "lineno")[:TOP_SITES]
        tracemalloc.stop()
        close(calls)

    print(f"{n:,} idle calls on a {PROCESSORS}-processor pipeline\n")
    print(
        table(
            ("measure", "value", "target"),
            [
                ("bytes per idle call (RSS)", rss_per_call, f"<= {TARGET_BYTES:,}"),
                ("bytes per idle call (tracemalloc)", traced_per_call, f"<= {TARGET_BYTES:,}"),
                ("CPU % of one core, 0 calls", cpu_no_calls, f"< {TARGET_CPU_PERCENT:g}"),
                (f"CPU % of one core, {n:,} idle calls", cpu_idle_calls, "-"),
            ],
        )
    )
    print("\nbiggest allocation sites, bytes per call:")
    for site in sites:
        frame = site.traceback[0]
        where = Path(frame.filename)
        if where.is_relative_to(ROOT):
            where = where.relative_to(ROOT)
        print(f"  {site.size_diff / n:8,.0f}  {where}:{frame.lineno}")
    worst = max(rss_per_call, traced_per_call)
    meets = worst <= TARGET_BYTES and cpu_no_calls < TARGET_CPU_PERCENT
    print(f"\n{'meets' if meets else 'misses'} the targets")
    finish(
        {
            "bench": "memory",
            "calls": n,
            "processors": PROCESSORS,
            "bytes_per_idle_call_rss": round(rss_per_call),
            "bytes_per_idle_call_tracemalloc": round(traced_per_call),
            "cpu_percent_no_calls": round(cpu_no_calls, 2),
            "cpu_percent_idle_calls": round(cpu_idle_calls, 2),
            "target_bytes_per_call": TARGET_BYTES,
            "target_cpu_percent_idle": TARGET_CPU_PERCENT,
        },
        args,
    )


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=1000, help="idle calls (default 1,000)")
    p.add_argument("--seconds", type=float, default=2.0, help="CPU sampling window (2 s)")
    main(p.parse_args())
