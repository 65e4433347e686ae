"""Audio toolkit costs: µs per 20 ms frame of each audio processor and kernel, Silero VAD
batched across calls against one call at a time, and how many calls one core carries
through µ-law decode → resample 8k→16k → Silero VAD.

1. Per frame: each processor runs alone on this thread, wired straight to a sink that drops
   what it pushes (no runtime in between), over ``--frames`` prepared 20 ms frames of one
   call; the kernels that have no processor (Opus, the jitter buffer) likewise. µs per
   frame is wall time over frames, the fastest of ``--repeats`` runs.
2. Silero: 1, 4, 16 and 64 calls, each with its own analyzer, take 20 ms frames in turn on
   one thread; per-call analyzers run the model on each 32 ms window as it fills, batched
   ones run every call's waiting windows together (see :mod:`flowcat_ft.audio.silero`).
3. Calls per core: the chain G711Decoder → Resampler(16000) → VADProcessor(Silero) for
   ``--calls`` calls, frames in turn, unpaced: frames/s ÷ 50 is the calls one core carries.
   First on this thread with the processors chained directly, then on a runtime with one
   stage thread, fed from this thread (the feeder runs on the other core).

The audio is a synthetic voice (a 150 Hz sawtooth, its loudness swinging at a syllable
rate) in noise, half speech and half silence, so the VADs change state as in a call.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from bench._common import finish, header, parser, table
from flowcat_ft import (
    Direction,
    Frame,
    FrameProcessor,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    Pipeline,
    Runtime,
    SlabPool,
    StartFrame,
)
from flowcat_ft.audio.g711 import ulaw_encode
from flowcat_ft.audio.jitter import JitterBuffer
from flowcat_ft.audio.opus import OpusDecoder, OpusEncoder
from flowcat_ft.audio.processors import G711Decoder, G711Encoder, Resampler
from flowcat_ft.audio.recording import CallRecorder, flush_recordings
from flowcat_ft.audio.silero import SileroVADAnalyzer
from flowcat_ft.audio.turns import TurnDetector
from flowcat_ft.audio.vad import EnergyVADAnalyzer
from flowcat_ft.audio.vad_processor import VADProcessor

DOWN = Direction.DOWNSTREAM
BATCH_CALLS = (1, 4, 16, 64)
CHAIN = "G711Decoder(mulaw 8k) -> Resampler(16000) -> VADProcessor(Silero 16k)"


def voice(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Seconds of audio at *rate*: voiced half-second bursts between silences, in noise."""
    t = np.arange(round(rate * seconds)) / rate
    sawtooth = 2 * ((150 * t) % 1.0) - 1
    loudness = (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)) * ((t % 1.0) < 0.5)
    signal = 8000 * sawtooth * loudness + np.random.default_rng(seed).normal(0, 30, len(t))
    return np.clip(np.rint(signal), -32768, 32767).astype(np.int16)


def ulaw(pcm: np.ndarray) -> np.ndarray:
    codes = np.empty(len(pcm), np.uint8)
    ulaw_encode(pcm, codes)
    return codes


def frames_of(pool, samples, rate, count, kind=InputAudioRawFrame, codec="pcm16"):
    """*count* 20 ms frames of *samples* (cycled), in slabs from *pool*."""
    n = rate // 50
    chunks = len(samples) // n
    return [
        kind.from_bytes(pool, samples[(i % chunks) * n :][:n].tobytes(), rate, codec=codec)
        for i in range(count)
    ]


def drop(frame: Frame) -> None:
    """The sink: the frame is freed, its slab goes back to the pool."""


def wire(processor: FrameProcessor, pool: SlabPool, down=drop) -> FrameProcessor:
    """Start *processor* as if in a call, pushing downstream to *down*, upstream nowhere."""
    processor._wire(SimpleNamespace(pool=pool, id=0), down, drop)
    processor.on_start(StartFrame())
    return processor


def best_us(run: Callable[[], int], repeats: int) -> float:
    """µs per item of the fastest of *repeats* runs; ``run()`` returns its item count."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        items = run()
        best = min(best, (time.perf_counter() - began) / items)
    return best * 1e6


# -- 1. per frame ------------------------------------------------------------------------------


def processor_cost(make, rate, samples, frames, repeats, kind=InputAudioRawFrame, codec="pcm16"):
    pool = SlabPool(frames + 64, 3840)

    def run() -> int:
        processor = wire(make(), pool)
        batch = frames_of(pool, samples, rate, frames, kind, codec)
        processor.process(batch[0], DOWN)  # first frame: per-call state is made
        began = time.perf_counter()
        for frame in batch[1:]:
            processor.process(frame, DOWN)
        elapsed = time.perf_counter() - began
        processor.on_end()
        return elapsed

    return min(run() for _ in range(repeats)) / (frames - 1) * 1e6


def opus_costs(frames: int, repeats: int) -> dict[str, float]:
    pcm = voice(16000, 2.0)
    chunks = [pcm[i : i + 320] for i in range(0, len(pcm), 320)]
    encoder, decoder = OpusEncoder(16000), OpusDecoder(16000)
    packets = [encoder.encode(chunk) for chunk in chunks]
    out = np.empty(320, np.int16)

    def encode() -> int:
        for i in range(frames):
            encoder.encode(chunks[i % len(chunks)])
        return frames

    def decode() -> int:
        for i in range(frames):
            decoder.decode(packets[i % len(packets)], out)
        return frames

    return {
        "OpusEncoder 16k (kernel)": best_us(encode, repeats),
        "OpusDecoder 16k (kernel)": best_us(decode, repeats),
    }


def jitter_cost(frames: int, repeats: int) -> float:
    payload = bytes(160)

    def run() -> int:
        buffer = JitterBuffer(8000, codec="mulaw")
        for k in range(frames):
            now = k * 0.02
            buffer.put(k & 0xFFFF, k * 160, payload, now + 0.01)
            buffer.get(now + 0.015)
        return frames

    return best_us(run, repeats)


def per_frame(frames: int, repeats: int) -> dict[str, float]:
    pcm8, pcm16, pcm24, pcm48 = (voice(rate, 2.0) for rate in (8000, 16000, 24000, 48000))
    silero = lambda: VADProcessor(SileroVADAnalyzer)  # noqa: E731
    cases = {
        "G711Decoder mulaw 8k": (G711Decoder, 8000, ulaw(pcm8), InputAudioRawFrame, "mulaw"),
        "G711Encoder mulaw 8k": (G711Encoder, 8000, pcm8, OutputAudioRawFrame, "pcm16"),
        "Resampler 8k->16k": (lambda: Resampler(16000), 8000, pcm8, InputAudioRawFrame, "pcm16"),
        "Resampler 16k->8k": (lambda: Resampler(8000), 16000, pcm16, InputAudioRawFrame, "pcm16"),
        "Resampler 24k->16k": (lambda: Resampler(16000), 24000, pcm24, InputAudioRawFrame, "pcm16"),
        "Resampler 48k->16k": (lambda: Resampler(16000), 48000, pcm48, InputAudioRawFrame, "pcm16"),
        "VADProcessor energy 16k": (
            lambda: VADProcessor(EnergyVADAnalyzer),
            16000,
            pcm16,
            InputAudioRawFrame,
            "pcm16",
        ),
        "VADProcessor Silero 16k": (silero, 16000, pcm16, InputAudioRawFrame, "pcm16"),
        "TurnDetector energy 16k": (
            lambda: TurnDetector(EnergyVADAnalyzer),
            16000,
            pcm16,
            InputAudioRawFrame,
            "pcm16",
        ),
    }
    costs = {
        name: processor_cost(make, rate, samples, frames, repeats, kind, codec)
        for name, (make, rate, samples, kind, codec) in cases.items()
    }
    with tempfile.TemporaryDirectory() as directory:
        make = lambda: CallRecorder(directory)  # noqa: E731
        costs["CallRecorder 16k"] = processor_cost(make, 16000, pcm16, frames, repeats)
        flush_recordings()
    costs.update(opus_costs(frames, repeats))
    costs["JitterBuffer put + get (kernel)"] = jitter_cost(frames, repeats)
    return costs


# -- 2. Silero, batched or not -----------------------------------------------------------------


def silero_cost(calls: int, frames: int, batched: bool, repeats: int) -> float:
    """µs per 20 ms frame, *calls* calls' analyzers fed in turn."""
    pcm = voice(16000, 4.0)
    shifts = [(7919 * i) % len(pcm) for i in range(calls)]
    streams = [np.roll(pcm, shift) for shift in shifts]
    rounds = max(1, frames // calls)

    def run() -> int:
        analyzers = [SileroVADAnalyzer(16000, batched=batched) for _ in range(calls)]
        for r in range(rounds):
            start = (r * 320) % (len(pcm) - 320)
            for analyzer, stream in zip(analyzers, streams, strict=True):
                analyzer.analyze(stream[start : start + 320])
        return rounds * calls

    return best_us(run, repeats)


# -- 3. calls per core -------------------------------------------------------------------------


def chain_fps(calls: int, frames: int, batched: bool) -> float:
    """Frames/s through the chain for *calls* calls on this thread."""
    pool = SlabPool(frames + 8 * calls, 640)
    chains = []
    for _ in range(calls):
        vad = wire(VADProcessor(lambda rate: SileroVADAnalyzer(rate, batched=batched)), pool)
        resampler = wire(Resampler(16000), pool, lambda f, vad=vad: vad.process(f, DOWN))
        decoder = wire(G711Decoder(), pool, lambda f, r=resampler: r.process(f, DOWN))
        chains.append(decoder)
    codes = ulaw(voice(8000, 4.0))
    batch = frames_of(pool, codes, 8000, frames, codec="mulaw")
    began = time.perf_counter()
    for i, frame in enumerate(batch):
        chains[i % calls].process(frame, DOWN)
    return frames / (time.perf_counter() - began)


def runtime_fps(calls: int, frames: int, batched: bool) -> float:
    """Frames/s through the chain on a runtime with one stage thread, fed from this one."""
    pipeline = Pipeline(
        [
            G711Decoder,
            lambda: Resampler(16000),
            lambda: VADProcessor(lambda rate: SileroVADAnalyzer(rate, batched=batched)),
        ],
        threads=1,
    )
    done = threading.Event()
    seen = 0

    def count(frame: Frame, direction: Direction) -> None:
        nonlocal seen
        if type(frame) is InputAudioRawFrame:
            seen += 1  # the stage thread is the only writer
            if seen == frames:
                done.set()

    with Runtime(threads=1, slabs=frames + 64 * calls, slab_bytes=640) as runtime:
        call_list = [runtime.open_call(pipeline, count) for _ in range(calls)]
        codes = ulaw(voice(8000, 4.0))
        batch = frames_of(runtime.pool, codes, 8000, frames, codec="mulaw")
        began = time.perf_counter()
        for i, frame in enumerate(batch):
            call_list[i % calls].push(frame)
        batch.clear()
        if not done.wait(120):
            raise RuntimeError(f"only {seen} of {frames} frames came out")
        return frames / (time.perf_counter() - began)


# -- main --------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    frames = args.frames or (2000 if args.quick else 10_000)
    repeats = args.repeats or (3 if args.quick else 5)
    chain_frames = args.chain_frames or (10_000 if args.quick else 50_000)
    header("audio", args)

    costs = per_frame(frames, repeats)
    print(f"1. µs per 20 ms frame, one call, this thread ({frames:,} frames, best of {repeats})\n")
    print(table(("processor / kernel", "µs per frame"), [(k, v) for k, v in costs.items()]))

    silero = {}
    for calls in BATCH_CALLS:
        alone = silero_cost(calls, frames, False, repeats)
        together = silero_cost(calls, frames, True, repeats)
        silero[calls] = {"per_call_us": alone, "batched_us": together}
    print("\n2. Silero VAD, µs per 20 ms frame (32 ms windows: 0.625 per frame), one thread\n")
    rows = [
        (str(n), v["per_call_us"], v["batched_us"], f"{v['per_call_us'] / v['batched_us']:.2f}x")
        for n, v in silero.items()
    ]
    print(table(("calls", "per-call analyzers", "batched", "batched gain"), rows))

    chains = {}
    for batched in (False, True):
        mode = "batched" if batched else "per_call"
        direct = chain_fps(args.calls, chain_frames, batched)
        staged = runtime_fps(args.calls, chain_frames, batched)
        chains[mode] = {"direct_fps": direct, "runtime_fps": staged}
    print(f"\n3. Calls per core: {CHAIN}, {args.calls} calls, {chain_frames:,} frames\n")
    rows = []
    for mode, v in chains.items():
        label = "Silero batched" if mode == "batched" else "Silero per call"
        rows.append((f"{label}, chained on this thread", v["direct_fps"], v["direct_fps"] / 50))
        rows.append((f"{label}, runtime, 1 stage thread", v["runtime_fps"], v["runtime_fps"] / 50))
    print(table(("run", "frames/s", "calls (fps / 50)"), rows))

    finish(
        {
            "bench": "audio",
            "frames": frames,
            "repeats": repeats,
            "us_per_frame": {k: round(v, 2) for k, v in costs.items()},
            "silero_us_per_frame": {
                str(n): {k: round(x, 2) for k, x in v.items()} for n, v in silero.items()
            },
            "chain": CHAIN,
            "chain_calls": args.calls,
            "calls_per_core": {
                mode: {
                    "direct": round(v["direct_fps"] / 50),
                    "runtime": round(v["runtime_fps"] / 50),
                }
                for mode, v in chains.items()
            },
        },
        args,
    )


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--frames", type=int, help="frames per processor run (2,000; full 10,000)")
    p.add_argument("--repeats", type=int, help="runs per measurement (3; full 5)")
    p.add_argument("--calls", type=int, default=100, help="calls through the chain (100)")
    p.add_argument(
        "--chain-frames", type=int, help="frames through the chain (10,000; full 50,000)"
    )
    main(p.parse_args())
