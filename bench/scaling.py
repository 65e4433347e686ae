"""Multi-core scaling: a CPU-bound per-frame audio workload on 1 thread and on 2 threads,
on this interpreter and on the other build, side by side.

The workload is what a telephony input does with each 20 ms frame: µ-law decode of 160
bytes (:func:`~flowcat_ft.audio.ulaw_decode`), resampling 8 kHz to 16 kHz
(:class:`~flowcat_ft.audio.StreamingResampler`) and energy VAD on the 320-sample 16 kHz
frame (:class:`~flowcat_ft.audio.EnergyVADAnalyzer`). Each thread serves its own calls
(``--calls-per-thread``, each with its own resampler and VAD state) round-robin, plain
threads with no runtime in between. A fixed number of frames runs on 1 thread, then split
evenly over 2 threads; frames/s is that number over the wall time, and the speed-up is the
2-thread rate over the 1-thread rate. Each is the best of ``--repeats`` runs, alternating
1 and 2 threads: the run least disturbed by other work on the machine.

The bench then runs itself under the other venv's python (``.venv-ft`` or ``.venv-gil``)
as a child process, so one run reports 3.13t and the GIL build together.
Target: a speed-up of at least 1.8x on 3.13t.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from bench._common import (
    build,
    finish,
    header,
    interpreter,
    other_build,
    parser,
    python_of,
    run_child,
    table,
)
from flowcat_ft.audio import EnergyVADAnalyzer, StreamingResampler, ulaw_decode

IN_RATE = 8000
OUT_RATE = 16000
FRAME = IN_RATE // 50
TARGET = 1.8
WORKLOAD = "ulaw_decode(160 B) -> StreamingResampler 8k->16k -> EnergyVADAnalyzer 16k"


class Stream:
    """One call's input: its µ-law frame, and its decoder, resampler and VAD state."""

    def __init__(self, seed: int) -> None:
        self.codes = np.random.default_rng(seed).integers(0, 256, FRAME, dtype=np.uint8)
        self.pcm8 = np.empty(FRAME, np.int16)
        self.pcm16 = np.empty(FRAME * OUT_RATE // IN_RATE, np.int16)
        self.resampler = StreamingResampler(IN_RATE, OUT_RATE)
        self.vad = EnergyVADAnalyzer(OUT_RATE)

    def process(self) -> None:
        ulaw_decode(self.codes, self.pcm8)
        n = self.resampler.process(self.pcm8, self.pcm16)
        self.vad.analyze(self.pcm16[:n])


def work(streams: list[Stream], frames: int, start: threading.Barrier | None = None) -> None:
    """Process ``frames`` frames round-robin over ``streams``."""
    if start is not None:
        start.wait()
    for i in range(frames):
        streams[i % len(streams)].process()


def measure(threads: int, frames: int, calls_per_thread: int) -> float:
    """Seconds for ``threads`` threads to process ``frames`` frames between them."""
    shares = [
        [Stream(t * calls_per_thread + c) for c in range(calls_per_thread)] for t in range(threads)
    ]
    for streams in shares:
        work(streams, 50)  # warm up: first calls, caches
    start = threading.Barrier(threads + 1)
    workers = [
        threading.Thread(target=work, args=(streams, frames // threads, start))
        for streams in shares
    ]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return time.perf_counter() - began


def scale(frames: int, calls_per_thread: int, repeats: int) -> dict[str, float]:
    """Frames/s on 1 and on 2 threads, and their ratio, on this interpreter."""
    one, two = [], []
    for _ in range(repeats):
        one.append(measure(1, frames, calls_per_thread))
        two.append(measure(2, frames, calls_per_thread))
    fps_1 = frames / min(one)
    fps_2 = frames / min(two)
    return {"fps_1": round(fps_1), "fps_2": round(fps_2), "speedup": round(fps_2 / fps_1, 3)}


def main(args: argparse.Namespace) -> None:
    frames = args.frames or (30_000 if args.quick else 200_000)
    frames -= frames % 2  # split evenly over 2 threads
    repeats = args.repeats or (3 if args.quick else 5)
    settings = {"frames": frames, "calls_per_thread": args.calls_per_thread, "repeats": repeats}
    if args.child:
        finish(scale(frames, args.calls_per_thread, repeats), args)
        return
    header("scaling", args)
    print(f"workload: {WORKLOAD}")
    print(
        f"{frames:,} frames per run, {args.calls_per_thread} calls per thread, "
        f"best of {repeats} runs\n"
    )
    results = {build(): scale(frames, args.calls_per_thread, repeats)}
    child_args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    child = run_child("bench.scaling", child_args, python=python_of(other_build()))
    results[other_build()] = {k: child[k] for k in ("fps_1", "fps_2", "speedup")}
    labels = {build(): interpreter(), other_build(): child["python"]}
    rows = [
        (labels[k], float(r["fps_1"]), float(r["fps_2"]), f"{r['speedup']:.2f}x")
        for k, r in sorted(results.items())
    ]
    print(table(("python", "frames/s 1 thread", "frames/s 2 threads", "speed-up"), rows))
    ft = results["ft"]["speedup"]
    verdict = "meets" if ft >= TARGET else "misses"
    print(f"\n3.13t speed-up {ft:.2f}x: {verdict} the target of >= {TARGET}x")
    finish(
        {
            "bench": "scaling",
            "workload": WORKLOAD,
            **settings,
            "fps": {k: {"1": v["fps_1"], "2": v["fps_2"]} for k, v in results.items()},
            "speedup": {k: v["speedup"] for k, v in results.items()},
            "target_speedup_ft": TARGET,
        },
        args,
    )


if __name__ == "__main__":
    p = parser(__doc__, child=True)
    p.add_argument("--frames", type=int, help="frames per run (default 200,000; quick 30,000)")
    p.add_argument("--repeats", type=int, help="runs per thread count (default 5; quick 3)")
    p.add_argument("--calls-per-thread", type=int, default=10, help="calls per thread (10)")
    main(p.parse_args())
