"""Interruptions: queued downstream audio and text are dropped at every stage, hooks run,
new frames pass, and the sweep is measured."""

from __future__ import annotations

import threading

from helpers import wait_until
from processors import Gate, Hooks, Tag

from flowcat_ft import (
    Direction,
    FrameProcessor,
    InterruptionFrame,
    OutputAudioRawFrame,
    Pipeline,
    TextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
)

AUDIO = b"\x10\x00" * 160


class Bot(FrameProcessor):
    """Turns each text frame into a burst of bot audio, like a TTS would."""

    def process(self, frame, direction):
        if isinstance(frame, TextFrame) and direction is Direction.DOWNSTREAM:
            for _ in range(5):
                pool = self.pool
                audio = OutputAudioRawFrame.from_bytes(pool, AUDIO, 8000)
                self.push(audio)
        self.push(frame, direction)


def test_interruption_drops_stale_output_and_lets_new_frames_through(runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    class Log(Hooks):
        log = []

    out: list = []
    call = runtime.open_call(
        Pipeline([Bot, Log, Blocked, Log], threads=2), lambda f, d: out.append(f)
    )
    for i in range(10):
        call.push(TextFrame(f"old{i}"))
    assert Blocked.entered.wait(5)
    assert wait_until(lambda: runtime.pool.in_use == 50)  # every burst is queued
    call.interrupt()
    # Open the gate once the interruption waits at the gated stage's door.
    gated = runtime._runners_now()[0].shard.stages[1]
    assert wait_until(lambda: len(gated.in_down.system) > 0)
    Blocked.opened.set()
    call.push(TextFrame("new"))
    call.push(UserStartedSpeakingFrame())
    call.end()
    assert call.wait(5)

    names = [f.text if isinstance(f, TextFrame) else type(f).__name__ for f in out]
    cut = names.index("InterruptionFrame")
    stale_after_cut = [n for n in names[cut:] if n.startswith("old")]
    assert stale_after_cut == []
    # At most the frame that was inside the gate (and its burst) got out before the cut.
    assert len([n for n in names[:cut] if n == "OutputAudioRawFrame"]) <= 5
    assert "new" in names[cut:] and "UserStartedSpeakingFrame" in names[cut:]
    assert names[cut:].count("OutputAudioRawFrame") == 5  # the new text's own burst
    for events in Log.events().values():
        assert events == ["start", "interruption", "end"]
    stages = runtime.metrics()["pipelines"][0]["stages"]
    assert sum(s["dropped_stale"] for s in stages) > 20
    assert sum(call.dropped) == sum(s["dropped_stale"] for s in stages)
    out.clear()  # frees the audio frames this test kept
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_the_interruption_sweep_is_measured(runtime):
    call = runtime.open_call(Pipeline([Tag] * 7), lambda f, d: None)
    for _ in range(5):
        call.interrupt()
    call.end()
    assert call.wait(5)
    sweep = runtime.metrics()["pipelines"][0]["interruption"]
    assert sweep["count"] == 5 and sweep["max_us"] > 0


class BargeIn(FrameProcessor):
    """Starts an interruption from inside the pipeline, as turn detection would."""

    def process(self, frame, direction):
        if isinstance(frame, TextFrame) and frame.text.startswith("barge"):
            self.interrupt()
        self.push(frame, direction)


def test_a_processor_can_start_an_interruption(runtime):
    out: list = []
    call = runtime.open_call(Pipeline([Tag, BargeIn, Tag]), lambda f, d: out.append(f))
    call.push(TextFrame("barge"))
    assert wait_until(lambda: any(isinstance(f, InterruptionFrame) for f in out))
    call.end()
    assert call.wait(5)


def test_the_callers_own_audio_and_words_survive_an_interruption(runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    out: list = []
    pipeline = Pipeline([FrameProcessor, Blocked], threads=2)
    call = runtime.open_call(pipeline, lambda f, d: out.append(f))
    call.push(TextFrame("bot words"))  # held in the gate
    assert Blocked.entered.wait(5)
    for _ in range(5):
        call.push_audio(AUDIO, 8000)
    call.push(TranscriptionFrame("stop please"))
    call.push(TextFrame("stale bot words"))
    gated = runtime._runners_now()[0].shard.stages[1]
    assert wait_until(lambda: len(gated.in_down.data) + len(gated.in_down.pending_data) >= 7)
    call.interrupt()
    assert wait_until(lambda: len(gated.in_down.system) > 0)
    Blocked.opened.set()
    call.end()
    assert call.wait(5)
    kinds = [type(f).__name__ for f in out]
    assert kinds.count("InputAudioRawFrame") == 5
    assert [f.text for f in out if type(f) is TranscriptionFrame] == ["stop please"]
    assert [f.text for f in out if type(f) is TextFrame] == ["bot words"]
