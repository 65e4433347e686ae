"""What tracing costs: an agent's calls with OpenTelemetry traces off, and on.

``--calls`` calls (default 40) each play ``--turns`` user turns (default 4): 1 s of a tone
(speech) and 0.6 s of faint noise, in 20 ms frames, pushed into every call in rounds as
fast as the runtime takes them. The pipeline is an agent's, with the network left out so
that only the runtime's work and the tracing's are measured: the turn detector (energy
VAD), then, traced, the conversation tracer, then an STT, an LLM and a TTS that answer
each turn at once (a transcript, a one-sentence reply, 0.5 s of audio) as jobs of
:class:`~flowcat_ft.services.base.AsyncService`, and a sink.

With traces on, the spans (a call, its turns, and each turn's STT, LLM and TTS job) go to
an OTLP/HTTP receiver in a child process, through the SDK's batch exporter, whose thread
and protobuf encoding count in this process's CPU time. Off, nothing is made: the
services check for a trace once per job.

Reported: process CPU time per call second of audio and per turn, off and on (the least of
``--repeats`` runs each, alternating), the turns answered, and the difference. Each turn
makes four spans (the turn, its STT, LLM and TTS jobs), each call one more.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from functools import partial

import numpy as np

from bench._common import finish, header, parser, table
from flowcat_ft import (
    Direction,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    Pipeline,
    Runtime,
    TranscriptionFrame,
    TTSAudioRawFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.audio.turns import TurnDetector
from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADParams
from flowcat_ft.services.base import AsyncService

RATE = 16000
FRAME = RATE // 50
SPEECH_SECS, PAUSE_SECS = 1.0, 0.6

RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


class AnsweringSTT(AsyncService):
    """A transcript for each end of the user's speech, as a job."""

    trace_kind = "stt"

    def process(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is UserStoppedSpeakingFrame:
            self.start_work(self._transcribe)
        self.push(frame, direction)

    async def _transcribe(self, generation: int) -> None:
        await asyncio.sleep(0)
        self.annotate(transcript="what time is it")
        self.emit(generation, TranscriptionFrame("what time is it", "", ""))


class AnsweringLLM(AsyncService):
    """A one-sentence reply to each transcript, as a job."""

    trace_kind = "llm"

    def process(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is TranscriptionFrame:
            self.start_work(self._reply)
        self.push(frame, direction)

    async def _reply(self, generation: int) -> None:
        await asyncio.sleep(0)
        self.annotate(**{"gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 6})
        self.emit_many(
            generation,
            [LLMFullResponseStartFrame(), LLMTextFrame("It is noon."), LLMFullResponseEndFrame()],
        )


class AnsweringTTS(AsyncService):
    """0.5 s of audio for each reply's text, as a job."""

    trace_kind = "tts"

    def process(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is LLMTextFrame:
            self.start_work(partial(self._speak, text=frame.text))
            return
        self.push(frame, direction)

    async def _speak(self, generation: int, text: str) -> None:
        await asyncio.sleep(0)
        self.annotate(**{"metrics.character_count": len(text)})
        tone = (np.sin(np.arange(FRAME) * 0.1) * 3000).astype(np.int16).tobytes()
        frames = [TTSAudioRawFrame.from_bytes(self.pool, tone, RATE) for _ in range(25)]
        self.emit_many(generation, frames)


def pipeline(tracer: object | None) -> Pipeline:
    analyzer = partial(EnergyVADAnalyzer, params=VADParams(start_secs=0.1, stop_secs=0.1))
    turns = partial(TurnDetector, analyzer, turn_timeout_secs=0.3)
    stages = [turns, tracer, AnsweringSTT, AnsweringLLM, AnsweringTTS]
    return Pipeline([stage for stage in stages if stage is not None])


def script(turns: int) -> list[bytes]:
    """One call's audio, 20 ms frames: faint noise, then per turn speech and a pause."""
    noise = np.random.default_rng(1)
    pieces = [(0.4, 0)] + [(SPEECH_SECS, 8000), (PAUSE_SECS, 0)] * turns
    frames = []
    for seconds, level in pieces:
        n = int(seconds * RATE)
        samples = noise.normal(0, 20, n) + level * np.sin(np.arange(n) * 2 * np.pi * 300 / RATE)
        pcm = samples.astype("<i2").tobytes()
        frames += [pcm[i : i + 2 * FRAME] for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME)]
    return frames


def run(calls: int, turns: int, endpoint: str | None) -> dict[str, float]:
    """One run: CPU seconds for ``calls`` calls of the script, and the turns answered."""
    telemetry = None
    if endpoint is not None:
        from flowcat_ft.telemetry.export import Telemetry

        telemetry = Telemetry(endpoint)
    frames = script(turns)
    runtime = Runtime(slabs=8192).start()
    answered = [0]

    def sink(frame: Frame, direction: Direction) -> None:
        if type(frame) is LLMFullResponseEndFrame:
            answered[0] += 1

    try:
        agent = pipeline(telemetry.tracer_factory() if telemetry else None)
        opened = [runtime.open_call(agent, sink) for _ in range(calls)]
        cpu = time.process_time()
        for pcm in frames:
            for call in opened:
                call.push_audio(pcm, RATE)  # waits while the pipeline is behind
        deadline = time.monotonic() + 60
        while answered[0] < calls * turns and time.monotonic() < deadline:
            time.sleep(0.005)
        for call in opened:
            call.end()
        for call in opened:
            call.wait(10)
        if telemetry is not None:
            telemetry.shutdown()  # export everything: its CPU counts
        cpu = time.process_time() - cpu
    finally:
        runtime.stop()
    return {"cpu_s": cpu, "answered": answered[0], "frames": len(frames)}


def main() -> None:
    args_parser = parser(__doc__)
    args_parser.add_argument("--calls", type=int, default=40)
    args_parser.add_argument("--turns", type=int, default=4)
    args_parser.add_argument("--repeats", type=int, default=3)
    args = args_parser.parse_args()
    if args.quick:
        args.calls, args.turns, args.repeats = 20, 3, 2
    header("tracing", args)
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        endpoint = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            for mode, where in (("off", None), ("on", endpoint)):
                result = run(args.calls, args.turns, where)
                if mode not in best or result["cpu_s"] < best[mode]["cpu_s"]:
                    best[mode] = result
    finally:
        receiver.terminate()
        receiver.wait()
    call_secs = args.calls * best["off"]["frames"] * 0.02
    turns = args.calls * args.turns
    rows, figures = [], {}
    for mode in ("off", "on"):
        r = best[mode]
        per_sec = r["cpu_s"] / call_secs * 1e3
        per_turn = r["cpu_s"] / turns * 1e3
        figures[mode] = {"cpu_ms_per_call_second": per_sec, "cpu_ms_per_turn": per_turn}
        rows.append(
            [mode, f"{r['cpu_s']:.2f}", f"{per_sec:.3f}", f"{per_turn:.2f}", int(r["answered"])]
        )
    print(table(["traces", "CPU s", "CPU ms / call-second", "CPU ms / turn", "turns"], rows))
    extra = best["on"]["cpu_s"] - best["off"]["cpu_s"]
    print(
        f"traces on cost {extra / turns * 1e3:.2f} ms of CPU per turn "
        f"({extra / best['off']['cpu_s'] * 100:+.1f}%)"
    )
    finish(
        {
            "calls": args.calls,
            "turns": args.turns,
            **{f"{m}_{k}": round(v, 4) for m, f in figures.items() for k, v in f.items()},
            "on_extra_cpu_ms_per_turn": round(extra / turns * 1e3, 3),
        },
        args,
    )


if __name__ == "__main__":
    main()
