"""Tail latency and garbage collection: the runtime's GC policy against default ``gc``.

A feeder thread pushes 160-byte µ-law audio frames into ``--calls`` calls (default 100) at
50 frames/s each, spread evenly in time (:func:`bench._common.pace`), through a
3-processor pipeline on a runtime with default settings. The processors allocate as real
ones do:

- ``InputMeter`` (a transport input / VAD): a small stats dict per frame, kept in a
  rolling window of the last second;
- ``ContextAggregator`` (an STT + LLM context aggregator): an interim-transcript dict per
  frame; a word every ``WORD_EVERY`` frames (5 words/s); every ``UTTERANCE`` frames a
  message (a dict holding a string, a metadata dict and a list of per-word dicts, as STT
  services return) added to the call's context, which grows for the whole call as a
  conversation's does;
- ``Observer`` (metrics and logging): a formatted string and a tuple per frame, and every
  ``CYCLE_EVERY`` frames a caught exception kept in a local variable, which makes a
  reference cycle (exception -> traceback -> frame -> exception) as libraries do.

Before the runtime starts the process builds ``--ballast`` long-lived objects (dicts and
lists), standing in for the modules and caches of a real agent's libraries.

Latency is the time from creating and pushing a frame (its ``pts``) to the output callback
seeing it leave the pipeline. The bench runs twice, each in a fresh process: with the
runtime's :class:`~flowcat_ft.gcpolicy.GcPolicy` (collect and freeze at start-up, automatic
collection off) and with default gc (``InterpreterGc``: a policy that leaves ``gc`` as it is).
Each run lasts ``--seconds`` (60; 20 with ``--quick``, so both fit in under a minute), and
reports p50/p99/p99.9/max latency; from ``gc.callbacks``, how many collections ran and
their longest pause; and, after the run with the calls still open, how long one
``gc.collect()`` takes on that heap (what each automatic collection costs under default
gc, and what the policy's own collections cost with the start-up heap frozen).
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
from collections import deque
from typing import Any

from bench._common import finish, header, pace, parser, percentiles, run_child, table
from flowcat_ft import (
    AudioRawFrame,
    Direction,
    Frame,
    FrameProcessor,
    Pipeline,
    Runtime,
)
from flowcat_ft.gcpolicy import GcPolicy, InterpreterGc

FPS = 50
FRAME = b"\xff" * 160  # 20 ms of µ-law silence at 8 kHz
WORDS = ("hello", "I", "would", "like", "to", "book", "a", "table", "for", "two", "tonight")
WORD_EVERY = 10  # frames per transcribed word (5 words/s)
UTTERANCE = 100  # frames per context message (2 s)
CYCLE_EVERY = 100  # frames per reference cycle (2 s)
MODES = ("policy", "default")
LABELS = {"policy": "GcPolicy (frozen, auto off)", "default": "default gc"}


class InputMeter(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.window: deque[dict[str, Any]] = deque(maxlen=FPS)

    def process(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, AudioRawFrame):
            samples = frame.samples
            self.window.append(
                {"pts": frame.pts, "n": frame.num_frames, "peak": int(samples.max())}
            )
        self.push(frame, direction)


class ContextAggregator(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.words: list[str] = []
        self.interim: dict[str, Any] = {}
        self.context: list[dict[str, Any]] = []

    def process(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, AudioRawFrame):
            self.frames += 1
            if self.frames % WORD_EVERY == 0:
                self.words.append(WORDS[len(self.words) % len(WORDS)])
            self.interim = {"text": " ".join(self.words[-3:]), "final": False, "pts": frame.pts}
            if self.frames % UTTERANCE == 0:
                self.context.append(
                    {
                        "role": "user",
                        "content": " ".join(self.words),
                        "meta": {"pts": frame.pts, "words": len(self.words)},
                        "words": [{"w": w, "t": i * 0.2} for i, w in enumerate(self.words)],
                    }
                )
                self.words = []
        self.push(frame, direction)


class Observer(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.last: tuple[str, int] | None = None

    def process(self, frame: Frame, direction: Direction) -> None:
        self.frames += 1
        self.last = (f"call={self.call.id} frame={self.frames} pts={frame.pts}", self.frames)
        if self.frames % CYCLE_EVERY == 0:
            self._make_cycle()
        self.push(frame, direction)

    def _make_cycle(self) -> None:
        try:
            raise TimeoutError("upstream service slow")
        except TimeoutError as error:
            caught = error  # noqa: F841 -- the cycle: error -> traceback -> frame -> caught


class Latencies:
    """Push-to-output latency of audio frames, in ns.

    Threading contract: audio frames leave on the last stage thread only, the single writer
    of ``samples``; ``done`` is set once ``expected`` have left.
    """

    def __init__(self, expected: int) -> None:
        self.samples: list[int] = []
        self.expected = expected
        self.done = threading.Event()

    def on_output(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, AudioRawFrame):
            self.samples.append(time.monotonic_ns() - frame.pts)
            if len(self.samples) >= self.expected:
                self.done.set()


class GcWatch:
    """Counts collections and their pauses through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pauses_ns: list[int] = []
        self._began = 0
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter_ns()
        else:
            self.pauses_ns.append(time.perf_counter_ns() - self._began)

    def stop(self) -> None:
        gc.callbacks.remove(self.callback)


def run_mode(mode: str, calls: int, seconds: float, ballast: int) -> dict[str, object]:
    """One run (see the module docstring); the figures for one mode."""
    kept = [{"id": i, "tags": [i]} for i in range(ballast // 2)]  # two objects each
    policy = GcPolicy() if mode == "policy" else InterpreterGc()
    pipeline = Pipeline([InputMeter, ContextAggregator, Observer])
    interval_ns = 10**9 // (FPS * calls)
    count = int(seconds * 1e9) // interval_ns
    latencies = Latencies(count)
    with Runtime(gc_policy=policy) as runtime:
        open_calls = [
            runtime.open_call(pipeline, on_output=latencies.on_output) for _ in range(calls)
        ]
        tracked = len(gc.get_objects())
        watch = GcWatch()

        def emit(first: int, n: int) -> None:
            for k in range(first, first + n):
                open_calls[k % calls].push_audio(FRAME, 8000, codec="mulaw")

        feeder = threading.Thread(target=pace, args=(count, interval_ns, emit), name="feeder")
        feeder.start()
        feeder.join()
        if not latencies.done.wait(30):
            raise RuntimeError(f"only {len(latencies.samples)} of {count} frames came out")
        watch.stop()
        began = time.perf_counter_ns()
        gc.collect()
        collect_after_ns = time.perf_counter_ns() - began
        for call in open_calls:
            call.end()
    stats = percentiles(latencies.samples, scale=1e-3)
    return {
        "mode": mode,
        "frames": count,
        "ballast_objects": 2 * len(kept),
        "tracked_objects": tracked,
        "latency_us": {k: round(v, 1) for k, v in stats.items()},
        "gc_collections": len(watch.pauses_ns),
        "gc_max_pause_us": round(max(watch.pauses_ns, default=0) / 1e3, 1),
        "gc_total_pause_ms": round(sum(watch.pauses_ns) / 1e6, 2),
        "gc_collect_after_us": round(collect_after_ns / 1e3, 1),
    }


def main(args: argparse.Namespace) -> None:
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    if args.child:
        finish(run_mode(args.mode, args.calls, seconds, args.ballast), args)
        return
    header("gcpause", args)
    print(
        f"{args.calls} calls x {FPS} fps through 3 allocating processors, {seconds:g} s per "
        f"mode (each in a fresh process), {args.ballast:,} ballast objects\n"
    )
    settings = [f"--calls={args.calls}", f"--seconds={seconds}", f"--ballast={args.ballast}"]
    results = {
        mode: run_child("bench.gcpause", [f"--mode={mode}", *settings], timeout=seconds + 120)
        for mode in MODES
    }
    rows = []
    for mode, r in results.items():
        lat = r["latency_us"]
        rows.append(
            (
                LABELS[mode],
                lat["p50"],
                lat["p99"],
                lat["p99.9"],
                lat["max"],
                r["gc_collections"],
                r["gc_max_pause_us"],
                r["gc_collect_after_us"],
            )
        )
    headers = (
        "gc",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "collections",
        "max pause us",
        "collect after us",
    )
    print(table(headers, rows))
    tracked = {mode: r["tracked_objects"] for mode, r in results.items()}
    print(
        "\ncollections and max pause: automatic ones during the run (gc.callbacks); collect "
        "after: one gc.collect() after the run, calls still open.\n"
        f"gc-tracked objects, not frozen, after opening the calls: {tracked['default']:,} "
        f"(default gc), {tracked['policy']:,} (policy)"
    )
    if not results["default"]["gc_collections"]:
        print(
            "default gc ran no automatic collection in this run: 3.13t collects once the net "
            "count of new gc objects passes a quarter of those alive after the last collection;"
            " a longer run (the full 60 s) may reach it"
        )
    finish(
        {
            "bench": "gcpause",
            "calls": args.calls,
            "seconds_per_mode": seconds,
            "ballast": args.ballast,
            **{
                mode: {k: v for k, v in r.items() if k not in ("python", "cores")}
                for mode, r in results.items()
            },
        },
        args,
    )


if __name__ == "__main__":
    p = parser(__doc__, child=True)
    p.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    p.add_argument("--seconds", type=float, help="seconds per mode (default 60; quick 20)")
    p.add_argument("--ballast", type=int, default=200_000, help="long-lived objects (200,000)")
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    main(p.parse_args())
