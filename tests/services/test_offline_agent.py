"""The offline agent end to end: espeak-ng speech in, the turn detector, PocketSphinx, the
conversation graph, espeak-ng out at real time, for scripted conversations of several
turns; each full reply is transcribed back by the same PocketSphinx workers. Barge-in is
decided on the words: two words, or "goodbye", over the bot cut it off; one word is
answered once the bot has finished; nothing said is lost. The bot pauses as soon as the
caller speaks over it, and a word that does not cut it off lets it play on, all of it.
Also the playout that paces the bot and says when it speaks, and the transcript of what
the caller heard."""

from __future__ import annotations

import sys
import sysconfig
import threading
import time

import numpy as np
import pytest
from helpers import wait_until
from offline_speech import need_worker_python, say, with_noise
from peers import need_program

from flowcat_ft import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CallClosedError,
    Direction,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    PauseOutputFrame,
    Pipeline,
    ResumeOutputFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from flowcat_ft.observers import Observer
from flowcat_ft.services.barge_in import BargeInGate
from flowcat_ft.services.offline import (
    DEFAULT_GRAPH,
    BotPlayout,
    EspeakTTS,
    GraphLLM,
    SphinxPool,
    SphinxSTT,
    TranscriptRecorder,
    load_graph,
    offline_agent_pipeline,
)
from flowcat_ft.services.offline.sphinx_pool import Grammar
from flowcat_ft.services.offline.sphinx_worker import words
from flowcat_ft.services.offline.transcript import Turn

# Real-time and CPU-heavy: ci/test.sh runs the tests of this group one at a time.
pytestmark = pytest.mark.xdist_group("realtime")

TOOLS = {"time_of_day": lambda slots: "ten past three"}
SLOTS = {"time_of_day": "ten past three"}

# -- the playout and the transcript ----------------------------------------------------------


def tone_frames(runtime, seconds, rate=16000):
    n = rate // 50
    for _ in range(round(seconds * 50)):
        tone = np.full(n, 1000, np.int16).tobytes()
        yield OutputAudioRawFrame.from_bytes(runtime.pool, tone, rate)


def test_the_playout_lets_audio_out_at_real_time_and_says_when_the_bot_speaks(runtime):
    # Timing bounds are one-sided where a loaded machine could only make things later.
    lead = 0.08
    out = []
    started = time.monotonic()
    call = runtime.open_call(
        Pipeline([lambda: BotPlayout(lead)]),
        lambda f, d: out.append((time.monotonic() - started, f, d)),
    )
    for frame in tone_frames(runtime, 1.0):
        call.push(frame)
    call.push(TTSTextFrame("one second of tone"))
    assert wait_until(lambda: any(type(f) is BotStoppedSpeakingFrame for _, f, _ in out))
    times = {type(f): t for t, f, d in out if d is Direction.DOWNSTREAM}
    audio = [t for t, f, _ in out if isinstance(f, OutputAudioRawFrame)]
    assert len(audio) == 50 and audio[-1] - audio[0] >= 1.0 - 0.02 - lead
    assert times[BotStartedSpeakingFrame] <= audio[0]
    assert audio[-1] <= times[TTSTextFrame] < times[BotStoppedSpeakingFrame]
    assert times[BotStoppedSpeakingFrame] - audio[0] >= 1.0
    upstream = [type(f) for _, f, d in out if d is Direction.UPSTREAM]
    assert upstream == [BotStartedSpeakingFrame, BotStoppedSpeakingFrame]

    # An interruption drops the audio still waiting, and the bot stops at once.
    out.clear()
    for frame in tone_frames(runtime, 2.0):
        call.push(frame)
    assert wait_until(lambda: any(type(f) is BotStartedSpeakingFrame for _, f, _ in out))
    time.sleep(0.3)
    call.interrupt()
    assert wait_until(lambda: any(type(f) is BotStoppedSpeakingFrame for _, f, _ in out))
    # A frame after the cut: audio still waiting would be let out ahead of it.
    call.push(TTSTextFrame("after the cut"))
    assert wait_until(lambda: any(type(f) is TTSTextFrame for _, f, _ in out))
    first = next(t for t, f, _ in out if isinstance(f, OutputAudioRawFrame))
    cut = next(t for t, f, _ in out if type(f) is InterruptionFrame)
    audio = [t for t, f, _ in out if isinstance(f, OutputAudioRawFrame)]
    assert all(t <= cut for t in audio)
    assert len(audio) * 0.02 <= cut - first + lead + 0.04  # no more than had played by then
    assert len(audio) < 100
    out.clear()
    del frame
    call.close()
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_the_playout_holds_the_audio_while_paused_and_lets_it_all_out_on_resume(runtime):
    out = []
    started = time.monotonic()
    call = runtime.open_call(
        Pipeline([lambda: BotPlayout(0.08)]),
        lambda f, d: (
            out.append((time.monotonic() - started, f)) if d is Direction.DOWNSTREAM else None
        ),
    )
    for frame in tone_frames(runtime, 1.0):
        call.push(frame)
    del frame
    assert wait_until(lambda: any(type(f) is BotStartedSpeakingFrame for _, f in out))
    call.push(PauseOutputFrame())
    time.sleep(0.3)  # the caller speaks a word over the bot
    call.push(ResumeOutputFrame())
    assert wait_until(lambda: any(type(f) is BotStoppedSpeakingFrame for _, f in out))
    kinds = [type(f) for _, f in out]
    paused, resumed = kinds.index(PauseOutputFrame), kinds.index(ResumeOutputFrame)
    assert OutputAudioRawFrame not in kinds[paused:resumed]  # nothing let out meanwhile
    assert kinds.count(OutputAudioRawFrame) == 50 and kinds[-1] is BotStoppedSpeakingFrame
    # Still speaking through the pause, which adds to the time the audio takes to play:
    # what was let out and not played by the pause plays again after it.
    first = next(t for t, f in out if isinstance(f, OutputAudioRawFrame))
    assert out[-1][0] - first >= 1.0 + 0.3 - 0.02
    assert kinds.count(BotStartedSpeakingFrame) == 1
    out.clear()
    call.close()
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_the_transcript_holds_what_was_heard_and_where_it_was_cut(runtime):
    call = runtime.open_call(Pipeline([TranscriptRecorder]), lambda f, d: None)
    for frame in [
        TTSTextFrame("Hello."),
        TTSTextFrame("How can I help?"),
        TranscriptionFrame("what time is it"),
        TTSTextFrame("It is noon."),
    ]:
        call.push(frame)
    time.sleep(0.05)
    call.interrupt()
    call.push(TranscriptionFrame("thanks"))
    call.close()
    assert call.processors[0].transcript.turns == [
        Turn("assistant", "Hello. How can I help?"),
        Turn("user", "what time is it"),
        Turn("assistant", "It is noon.", interrupted=True),
        Turn("user", "thanks"),
    ]


# -- end to end ----------------------------------------------------------------------------


class Caller:
    """Plays the caller: a line's noise, 20 ms at a time at real time, and speech on cue.
    Records what comes out of the call, and the bot's audio of each reply. The speech
    recognition workers are started first, as ``flowcat-ft serve`` does before it takes
    calls."""

    def __init__(self, runtime, pipeline, metadata):
        for started in SphinxPool.shared(runtime).start():
            started.result(60)
        self.lock = threading.Lock()
        self.frames = []  # everything but audio, in order
        self.replies = []  # the bot's audio, one array list per reply
        self.pushed = []  # the gate's pauses and resumes, and the STT's words, in order
        self.rng = np.random.default_rng(1)
        self.clock = time.monotonic()
        self.call = runtime.open_call(
            pipeline,
            self._output,
            start_frame=StartFrame(metadata=metadata),
            observers=[PausesAndWords(self)],
        )

    def _output(self, frame, direction):
        with self.lock:
            if isinstance(frame, TTSAudioRawFrame):
                self.replies[-1].append(frame.samples.copy())
            elif direction is Direction.DOWNSTREAM:
                if isinstance(frame, LLMFullResponseStartFrame):
                    self.replies.append([])
                self.frames.append(frame)

    def count(self, kind):
        with self.lock:
            return sum(type(f) is kind for f in self.frames)

    def _push(self, pcm):
        for start in range(0, len(pcm) - 319, 320):
            try:
                self.call.push_audio(pcm[start : start + 320].tobytes(), 16000)
            except CallClosedError:
                return False
            self.clock += 0.02
            time.sleep(max(0.0, self.clock - time.monotonic()))
        return True

    def say(self, text):
        self._push(with_noise(say(text), seed=int(self.rng.integers(1 << 30))))

    def wait(self, seconds=None, until=None, timeout=20.0):
        """Stay on the line, silent, for *seconds* or until *until()*."""
        deadline = time.monotonic() + (seconds if seconds is not None else timeout)
        while time.monotonic() < deadline and not (until and until()):
            if not self._push(with_noise(np.zeros(320), seed=int(self.rng.integers(1 << 30)))):
                return
        assert seconds is not None or until(), "timed out waiting for the bot"


class PausesAndWords(Observer):
    """Notes in ``caller.pushed``, in order, each pause and resume of the bot's output
    ("pause", "resume") and each transcript the speech recogniser pushes (its words)."""

    def __init__(self, caller):
        self.caller = caller

    def on_push(self, call, source, frame, direction):
        kind = type(frame)
        if kind in (PauseOutputFrame, ResumeOutputFrame) and isinstance(source, BargeInGate):
            noted = "pause" if kind is PauseOutputFrame else "resume"
        elif isinstance(frame, TranscriptionFrame) and isinstance(source, SphinxSTT):
            noted = frame.text
        else:
            return
        with self.caller.lock:
            self.caller.pushed.append(noted)


def greeting_samples(runtime, metadata):
    """How many samples the agent's greeting has, said to the end: deterministic speech."""
    graph = load_graph(DEFAULT_GRAPH, TOOLS)
    call = runtime.open_call(
        Pipeline([lambda: GraphLLM(graph), EspeakTTS]), start_frame=StartFrame(metadata=metadata)
    )
    samples = 0
    for frame in call.frames(timeout=20):
        if isinstance(frame, TTSAudioRawFrame):
            samples += frame.num_frames
            frame.release()
        elif isinstance(frame, LLMFullResponseEndFrame):
            break
    call.close()
    return samples


def test_a_scripted_conversation_with_a_barge_in(runtime):
    need_program("espeak-ng")
    need_worker_python()
    caller = Caller(
        runtime, offline_agent_pipeline(tools=TOOLS, turn_timeout_secs=0.6), {"caller": "Alice"}
    )
    stopped = lambda n: lambda: caller.count(BotStoppedSpeakingFrame) >= n  # noqa: E731

    # The bot greets; the caller cuts in after its first sentence.
    caller.wait(until=lambda: caller.count(BotStartedSpeakingFrame) >= 1)
    caller.wait(1.2)
    caller.say("what time is it")
    caller.wait(until=stopped(2))
    caller.wait(0.3)
    caller.say("please tell me the weather")
    caller.wait(until=stopped(3))
    caller.wait(0.3)
    caller.say("goodbye")
    caller.wait(until=lambda: caller.call.done)  # the agent hangs up

    call = caller.call
    assert call.wait(10) and call.end_reason == "ended"
    frames = caller.frames
    heard = [f.text for f in frames if type(f) is TranscriptionFrame]
    assert heard == ["what time is it", "please tell me the weather", "goodbye"]
    graph = load_graph(DEFAULT_GRAPH, TOOLS)
    slots = {**graph.slots, "caller": "Alice", **SLOTS}
    expected = [
        graph.nodes[name].reply.format_map(slots)
        for name in ("welcome", "time", "weather", "goodbye")
    ]
    spoken = [f.text for f in frames if type(f) is TTSTextFrame]
    assert spoken == ["Hello Alice!", *expected[1:]]  # sentence by sentence, as heard

    # The barge-in cut the greeting short; the other replies were heard to the end.
    assert sum(type(f) is InterruptionFrame for f in frames) == 1
    durations = [sum(map(len, reply)) / 16000 for reply in caller.replies]
    assert 1.0 < durations[0] < 3.0, durations

    # Each full reply, transcribed back by the same workers, says what the graph said.
    check_replies(runtime, graph, slots, caller.replies[1:], expected[1:])

    # The transcript holds what the caller heard: the greeting up to where they cut in.
    turns = call.processors[-1].transcript.turns
    assert turns == [
        Turn("assistant", "Hello Alice!", interrupted=True),
        Turn("user", "what time is it"),
        Turn("assistant", expected[1]),
        Turn("user", "please tell me the weather"),
        Turn("assistant", expected[2]),
        Turn("user", "goodbye"),
        Turn("assistant", expected[3]),
    ]
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert not sys._is_gil_enabled()


def check_replies(runtime, graph, slots, replies, expected):
    """Each reply's audio, transcribed back by the agent's own workers, says *expected*."""
    grammar = Grammar.from_phrases(
        [node.reply.format_map(slots) for node in graph.nodes.values() if node.reply]
        + [graph.fallback]
    )
    workers = SphinxPool.shared(runtime)
    for reply, text in zip(replies, expected, strict=True):
        pcm = with_noise(np.concatenate(reply))
        assert workers.transcribe(pcm.tobytes(), grammar).text == " ".join(words(text))


def test_goodbye_over_the_reply_cuts_it_off_and_ends_the_call(runtime):
    need_program("espeak-ng")
    need_worker_python()
    caller = Caller(runtime, offline_agent_pipeline(tools=TOOLS), {"caller": "Bob"})
    caller.wait(until=lambda: caller.count(BotStartedSpeakingFrame) >= 1)
    caller.wait(1.2)
    caller.say("goodbye")  # one word, but one that always interrupts
    caller.wait(until=lambda: caller.call.done)

    call = caller.call
    assert call.wait(10) and call.end_reason == "ended"
    frames = caller.frames
    heard = [f.text for f in frames if type(f) is TranscriptionFrame]
    graph = load_graph(DEFAULT_GRAPH, TOOLS)
    assert [graph.match("welcome", text).to for text in heard] == ["goodbye"]
    assert sum(type(f) is InterruptionFrame for f in frames) == 1
    # The bot paused as the caller started speaking, before any word was recognised (so
    # the carrier's clear goes out then), and the word cut it off: it never resumed.
    assert caller.pushed[0] == "pause" and len(caller.pushed) > 1
    assert "resume" not in caller.pushed
    kinds = [type(f) for f in frames]
    assert kinds.index(PauseOutputFrame) < kinds.index(InterruptionFrame)
    slots = {**graph.slots, "caller": "Bob", **SLOTS}
    goodbye = graph.nodes["goodbye"].reply.format_map(slots)
    # The greeting was cut off where the caller spoke; the goodbye was heard in full.
    durations = [sum(map(len, reply)) / 16000 for reply in caller.replies]
    assert durations[0] < 3.0, durations
    check_replies(runtime, graph, slots, caller.replies[1:], [goodbye])
    turns = call.processors[-1].transcript.turns
    assert turns == [
        Turn("assistant", "Hello Bob!", interrupted=True),
        Turn("user", heard[0]),
        Turn("assistant", goodbye),
    ]
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_one_word_over_the_reply_is_answered_after_it_and_two_words_cut_it_off(runtime):
    need_program("espeak-ng")
    need_worker_python()
    caller = Caller(
        runtime, offline_agent_pipeline(tools=TOOLS, turn_timeout_secs=0.6), {"caller": "Eve"}
    )
    started = lambda n: lambda: caller.count(BotStartedSpeakingFrame) >= n  # noqa: E731
    stopped = lambda n: lambda: caller.count(BotStoppedSpeakingFrame) >= n  # noqa: E731

    # "Weather" over the greeting: the greeting goes on to its end, then it is answered.
    caller.wait(until=started(1))
    caller.wait(1.2)
    caller.say("weather")
    # "Help me" over that answer: two words, so the bot stops and answers them.
    caller.wait(until=started(2))
    caller.wait(0.6)
    caller.say("help me")
    caller.wait(until=stopped(3))
    caller.wait(0.3)
    caller.say("goodbye")
    caller.wait(until=lambda: caller.call.done)

    call = caller.call
    assert call.wait(10) and call.end_reason == "ended"
    frames = caller.frames
    heard = [f.text for f in frames if type(f) is TranscriptionFrame]
    assert heard == ["weather", "help me", "goodbye"]
    assert sum(type(f) is InterruptionFrame for f in frames) == 1
    # "Weather" paused the greeting as soon as it was heard to start, before its word;
    # the turn ended without interrupting, and the greeting played on: all of it.
    # "Help me" paused the next reply, and cut it off.
    pushed = caller.pushed
    assert pushed[0] == "pause" and pushed.index("resume") > pushed.index("weather")
    assert [p for p in pushed if p in ("pause", "resume")] == ["pause", "resume", "pause"]
    assert sum(map(len, caller.replies[0])) == greeting_samples(runtime, {"caller": "Eve"})
    graph = load_graph(DEFAULT_GRAPH, TOOLS)
    slots = {**graph.slots, "caller": "Eve", **SLOTS}
    greeting, abilities, goodbye = (
        graph.nodes[name].reply.format_map(slots) for name in ("welcome", "abilities", "goodbye")
    )
    replies = [caller.replies[i] for i in (0, 2, 3)]
    check_replies(runtime, graph, slots, replies, [greeting, abilities, goodbye])
    # The weather was cut off before its sentence was heard (so the transcript, which
    # holds what was heard, has the caller's two turns side by side).
    durations = [sum(map(len, reply)) / 16000 for reply in caller.replies]
    assert durations[1] < 3.0, durations
    turns = call.processors[-1].transcript.turns
    assert turns == [
        Turn("assistant", greeting),  # heard to its end
        Turn("user", "weather help me"),
        Turn("assistant", abilities),
        Turn("user", "goodbye"),
        Turn("assistant", goodbye),
    ]
    assert wait_until(lambda: runtime.pool.in_use == 0)
