"""VADProcessor and TurnDetector in a running pipeline, on real speech: speaking events
where the speech is, the end of a turn after its timeout (and not at a shorter pause), and
a barge-in interruption only for speech longer than the minimum (or none, every speech
starting a turn, where a stage downstream decides on the words), and a turn even for speech
a batched analyzer reports only as it stops.

An event's time is the audio that came out of the pipeline ahead of it (events travel in
order with the audio)."""

import numpy as np
import pytest
from helpers import wait_until
from speech_samples import track

from flowcat_ft import (
    BotStartedSpeakingFrame,
    Direction,
    InputAudioRawFrame,
    InterruptionFrame,
    Pipeline,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from flowcat_ft.audio.g711 import ulaw_encode
from flowcat_ft.audio.processors import G711Decoder, Resampler
from flowcat_ft.audio.silero import SileroVADAnalyzer
from flowcat_ft.audio.turns import TurnDetector
from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADParams, VADState
from flowcat_ft.audio.vad_processor import VADProcessor

SHORT_STOP = VADParams(stop_secs=0.2)
ANALYZERS = {
    "energy": lambda rate: EnergyVADAnalyzer(rate, SHORT_STOP),
    "silero": lambda rate: SileroVADAnalyzer(rate, SHORT_STOP),
}


def play(runtime, pipeline, frames, before=()):
    """Push *before* (other frames), then *frames* of audio, into a call; return each event
    (any frame but audio) that came out, with the seconds of audio ahead of it."""
    events = []
    heard = 0.0

    def collect(frame, direction):
        nonlocal heard
        if isinstance(frame, InputAudioRawFrame):
            heard += frame.num_frames / frame.sample_rate
        else:
            events.append((type(frame), round(heard, 3)))

    call = runtime.open_call(pipeline, collect)
    push_all(call, before)
    push_all(call, frames)
    call.end()
    assert call.wait(10)
    assert wait_until(lambda: runtime.pool.in_use == 0)
    return events


def push_all(call, frames):
    for frame in frames:
        call.push(frame)


def pcm_frames(runtime, pcm, rate):
    n = rate // 50
    for start in range(0, len(pcm) - n + 1, n):
        yield InputAudioRawFrame.from_bytes(runtime.pool, pcm[start : start + n].tobytes(), rate)


def times(events, kind):
    return [t for k, t in events if k is kind]


@pytest.mark.parametrize("name", ANALYZERS)
def test_the_vad_processor_reports_speech_from_telephone_audio(runtime, tmp_path_factory, name):
    speech = track(tmp_path_factory, ["I need help with my order.", "Yes."], 8000, [0.6, 1.2, 1.0])
    codes = np.empty(len(speech.pcm), np.uint8)
    ulaw_encode(speech.pcm, codes)
    pool = runtime.pool
    frames = (
        InputAudioRawFrame.from_bytes(pool, codes[i : i + 160].tobytes(), 8000, codec="mulaw")
        for i in range(0, len(codes) - 159, 160)
    )
    params = VADParams()
    make = ANALYZERS[name]
    pipeline = Pipeline(
        [
            G711Decoder,
            lambda: Resampler(16000),
            lambda: VADProcessor(lambda rate: type(make(rate))(rate, params)),
        ],
        threads=2,
    )
    events = play(runtime, pipeline, frames)

    started = times(events, UserStartedSpeakingFrame)
    stopped = times(events, UserStoppedSpeakingFrame)
    assert len(started) == len(stopped) == 2
    bounds = zip(speech.segments, speech.audible, started, stopped, strict=True)
    for (start, end), (_, heard_end), on, off in bounds:
        # start_secs after the speech starts, stop_secs after it ends (after the loud speech
        # or as late as the audible speech: see test_vad_speech), give or take 60 ms and
        # the window that decided.
        assert -0.06 <= on - (start + params.start_secs) <= 0.1
        assert end - 0.06 <= off - params.stop_secs <= max(heard_end, end) + 0.1


@pytest.mark.parametrize("name", ANALYZERS)
def test_a_turn_ends_after_its_timeout_not_at_a_shorter_pause(runtime, tmp_path_factory, name):
    texts = ["I need help with my order.", "Could you call me back?"]
    speech = track(tmp_path_factory, texts, 16000, [0.5, 0.1, 2.0])
    timeout = 1.0
    (_, first_end), (second_start, second_end) = speech.segments
    assert second_start - first_end < timeout - 0.3  # espeak adds some silence of its own
    detector = lambda: TurnDetector(ANALYZERS[name], turn_timeout_secs=timeout)  # noqa: E731
    events = play(runtime, Pipeline([detector]), pcm_frames(runtime, speech.pcm, 16000))

    (on,) = times(events, UserStartedSpeakingFrame)  # one turn, across the pause
    (off,) = times(events, UserStoppedSpeakingFrame)
    assert speech.segments[0][0] < on < speech.segments[0][0] + 0.4
    # The timeout runs from the frame in which the analyzer stopped calling it speech:
    # within 60 ms of the speech's end (test_vad_speech), plus the window that decided.
    assert -0.06 <= off - (second_end + timeout) <= 0.1


def test_the_end_of_a_turn_is_stamped_with_when_the_speech_ended(runtime, tmp_path_factory):
    """So a response latency measured from it includes the turn timeout."""
    speech = track(tmp_path_factory, ["Could you call me back?"], 16000, [0.5, 1.5])
    (_, end), start_ns = speech.segments[0], 10**12
    frames = list(pcm_frames(runtime, speech.pcm, 16000))
    for i, frame in enumerate(frames):
        frame.pts = start_ns + i * 20_000_000  # arriving in real time
    stops = []

    def collect(frame, direction):
        if type(frame) is UserStoppedSpeakingFrame:
            stops.append(frame.pts)

    detector = lambda: TurnDetector(ANALYZERS["energy"], turn_timeout_secs=0.8)  # noqa: E731
    call = runtime.open_call(Pipeline([detector]), collect)
    push_all(call, frames)
    call.end()
    assert call.wait(10)
    (stopped,) = stops
    assert -0.06 <= (stopped - start_ns) / 1e9 - end <= 0.1


@pytest.mark.parametrize("name", ANALYZERS)
def test_only_long_speech_barges_in_on_the_bot(runtime, tmp_path_factory, name):
    speech = track(
        tmp_path_factory, ["Yes.", "Hello, I would like to book a table."], 16000, [0.5, 1.5, 1.5]
    )
    min_barge_in = 0.6
    detector = lambda: TurnDetector(ANALYZERS[name], min_barge_in_secs=min_barge_in)  # noqa: E731
    frames = pcm_frames(runtime, speech.pcm, 16000)
    events = play(runtime, Pipeline([detector]), frames, before=[BotStartedSpeakingFrame()])

    assert len(times(events, InterruptionFrame)) == 1
    (on,) = times(events, UserStartedSpeakingFrame)  # "yes" under the bot starts no turn
    # Speech time, that is: the short pauses between words do not count.
    long_start = speech.segments[1][0]
    assert long_start + min_barge_in <= on <= long_start + min_barge_in + 0.3
    assert len(times(events, UserStoppedSpeakingFrame)) == 1


def test_without_the_bot_speaking_nothing_is_interrupted(runtime, tmp_path_factory):
    speech = track(
        tmp_path_factory, ["Yes.", "Hello, I would like to book a table."], 16000, [0.5, 1.5, 1.5]
    )
    detector = lambda: TurnDetector(ANALYZERS["energy"], min_barge_in_secs=0.6)  # noqa: E731
    events = play(runtime, Pipeline([detector]), pcm_frames(runtime, speech.pcm, 16000))
    assert times(events, InterruptionFrame) == []
    assert len(times(events, UserStartedSpeakingFrame)) == 2


def test_bot_speaking_frames_count_travelling_upstream_too():
    detector = TurnDetector(ANALYZERS["energy"])
    detector._wire(None, lambda frame: None, lambda frame: None)
    detector.process(BotStartedSpeakingFrame(), Direction.UPSTREAM)
    assert detector.bot_speaking


@pytest.mark.parametrize("name", ANALYZERS)
def test_without_interrupting_speech_over_the_bot_starts_turns_at_once(
    runtime, tmp_path_factory, name
):
    # For a stage downstream that decides on the words (BargeInGate): even "Yes." is a turn.
    speech = track(
        tmp_path_factory, ["Yes.", "Hello, I would like to book a table."], 16000, [0.5, 1.5, 1.5]
    )
    detector = lambda: TurnDetector(ANALYZERS[name], interrupts=False)  # noqa: E731
    frames = pcm_frames(runtime, speech.pcm, 16000)
    events = play(runtime, Pipeline([detector]), frames, before=[BotStartedSpeakingFrame()])
    assert times(events, InterruptionFrame) == []
    starts = times(events, UserStartedSpeakingFrame)
    assert len(starts) == 2 and len(times(events, UserStoppedSpeakingFrame)) == 2
    for start, (begin, _) in zip(starts, speech.segments, strict=True):
        assert begin <= start <= begin + 0.4  # at the analyzer's start, not a barge-in's


class Scripted:
    """An analyzer that reports the states it is given, one per frame."""

    sample_rate = 16000

    def __init__(self, states):
        self.states = iter(states)

    def analyze(self, pcm):
        return next(self.states, VADState.QUIET)

    def reset(self):
        pass


def test_speech_a_batched_analyzer_reports_only_as_stopping_still_starts_a_turn(runtime):
    # A batched analyzer reports after several windows: a short word's SPEAKING may fall
    # between two reports, STARTING followed by STOPPING.
    states = [VADState.QUIET] * 5 + [VADState.STARTING] * 10 + [VADState.STOPPING] * 10
    detector = lambda: TurnDetector(lambda rate: Scripted(states), turn_timeout_secs=0.4)  # noqa: E731
    frames = pcm_frames(runtime, np.zeros(16000 * 2, np.int16), 16000)
    events = play(runtime, Pipeline([detector]), frames)
    assert times(events, UserStartedSpeakingFrame) == [0.3]
    assert times(events, UserStoppedSpeakingFrame) == [0.7]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        # Speech that starts a turn: reported after 60 ms of it, 140 ms before the turn.
        (
            [VADState.QUIET] * 5 + [VADState.STARTING] * 10 + [VADState.SPEAKING] * 10,
            [
                (VADUserStartedSpeakingFrame, 0.14),
                (UserStartedSpeakingFrame, 0.3),
                (VADUserStoppedSpeakingFrame, 0.88),
                (UserStoppedSpeakingFrame, 0.88),
            ],
        ),
        # Speech too short for a turn (a cough), with a gap of two quiet windows in it
        # (one onset): its end is reported once the analyzer has been quiet for the timeout.
        (
            [VADState.QUIET] * 5
            + [VADState.STARTING] * 4
            + [VADState.QUIET] * 3
            + [VADState.STARTING] * 4,
            [(VADUserStartedSpeakingFrame, 0.14), (VADUserStoppedSpeakingFrame, 0.7)],
        ),
        # Speech shorter than onset_secs: nothing.
        ([VADState.QUIET] * 5 + [VADState.STARTING] * 2, []),
    ],
)
def test_with_onset_secs_speech_is_reported_before_a_turn_starts(runtime, states, expected):
    detector = lambda: TurnDetector(  # noqa: E731
        lambda rate: Scripted(states),
        turn_timeout_secs=0.4,
        onset_secs=0.06,
        interrupts=False,
    )
    frames = pcm_frames(runtime, np.zeros(16000 * 2, np.int16), 16000)
    events = play(runtime, Pipeline([detector]), frames, before=[BotStartedSpeakingFrame()])
    speech = (VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame)
    turns = (UserStartedSpeakingFrame, UserStoppedSpeakingFrame)
    assert [e for e in events if e[0] in speech + turns] == expected


def test_without_onset_secs_no_speech_onset_is_reported(runtime):
    states = [VADState.QUIET] * 5 + [VADState.STARTING] * 10 + [VADState.SPEAKING] * 10
    detector = lambda: TurnDetector(lambda rate: Scripted(states), turn_timeout_secs=0.4)  # noqa: E731
    frames = pcm_frames(runtime, np.zeros(16000 * 2, np.int16), 16000)
    events = play(runtime, Pipeline([detector]), frames)
    assert times(events, VADUserStartedSpeakingFrame) == []
    assert times(events, VADUserStoppedSpeakingFrame) == []
    assert len(times(events, UserStartedSpeakingFrame)) == 1
