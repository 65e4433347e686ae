"""CallRecorder: a stereo WAV per call, read back with the wave module: the user's audio
on the left, the bot's on the right lined up with it, resampled, cut at an interruption,
finished at the end, closed on cancel, and every call written by one thread."""

import threading
import wave

import numpy as np
from helpers import wait_until

from flowcat_ft import (
    InputAudioRawFrame,
    OutputAudioRawFrame,
    Pipeline,
    TTSAudioRawFrame,
)
from flowcat_ft.audio.recording import CallRecorder, flush_recordings
from flowcat_ft.audio.resample import StreamingResampler

RATE = 16000
FRAME = RATE // 50


def tone(rate: int, frames: int, frequency: float, level: float = 8000.0) -> np.ndarray:
    t = np.arange(frames * rate // 50) / rate
    return np.rint(level * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def framed(pcm: np.ndarray, rate: int):
    n = rate // 50
    return [pcm[i : i + n] for i in range(0, len(pcm), n)]


class Caller:
    """A call through a recorder, fed from the test: user frames, bot frames, and a count of
    the user frames that came out (so the test knows the recorder has seen them)."""

    def __init__(self, runtime, directory) -> None:
        self.runtime = runtime
        self.heard = 0

        def count(frame, direction):
            if isinstance(frame, InputAudioRawFrame):
                self.heard += 1

        self.call = runtime.open_call(Pipeline([lambda: CallRecorder(directory)]), count)
        self.recorder = self.call.processors[0]
        self.sent = 0

    def user(self, chunks) -> None:
        for chunk in chunks:
            frame = InputAudioRawFrame.from_bytes(self.runtime.pool, chunk.tobytes(), RATE)
            self.call.push(frame)
            self.sent += 1
        assert wait_until(lambda: self.heard == self.sent)

    def bot(self, chunks, rate: int, kind=OutputAudioRawFrame) -> None:
        for chunk in chunks:
            self.call.push(kind.from_bytes(self.runtime.pool, chunk.tobytes(), rate))

    def finish(self, cancel: bool = False):
        """End (or cancel) the call; return the recording's channels and its rate."""
        path = self.recorder.path
        self.call.cancel() if cancel else self.call.end()
        assert self.call.wait(5)
        assert flush_recordings(5)
        with wave.open(str(path)) as wav:
            assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2)
            frames = np.frombuffer(wav.readframes(wav.getnframes()), np.int16).reshape(-1, 2)
            return frames[:, 0], frames[:, 1], wav.getframerate()


def test_the_bot_is_lined_up_with_the_user_it_answers(runtime, tmp_path):
    user = tone(RATE, 60, 440.0)
    bot = tone(24000, 25, 1000.0)  # 0.5 s at 24 kHz, sent all at once, as a TTS does
    caller = Caller(runtime, tmp_path)
    caller.user(framed(user, RATE)[:10])
    caller.bot(framed(bot, 24000), 24000, TTSAudioRawFrame)
    caller.user(framed(user, RATE)[10:])
    left, right, rate = caller.finish()

    assert rate == RATE
    assert len(left) == len(user)  # 1.2 s of the caller's clock
    np.testing.assert_array_equal(left, user)
    resampler = StreamingResampler(24000, RATE)
    expected = np.empty(len(bot) * 2 // 3, np.int16)
    resampler.process(bot, expected)
    start = 10 * FRAME
    np.testing.assert_array_equal(right[:start], 0)
    np.testing.assert_array_equal(right[start : start + len(expected)], expected)
    np.testing.assert_array_equal(right[start + len(expected) :], 0)
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_an_interruption_cuts_the_bot_short(runtime, tmp_path):
    user = np.zeros(40 * FRAME, np.int16)
    bot = tone(RATE, 50, 700.0)  # 1 s
    caller = Caller(runtime, tmp_path)
    caller.bot(framed(bot, RATE), RATE)
    caller.user(framed(user, RATE)[:10])  # 0.2 s of the bot heard
    caller.call.interrupt()
    assert wait_until(lambda: caller.recorder._head == caller.recorder._tail)
    caller.user(framed(user, RATE)[10:])
    _, right, _ = caller.finish()
    assert len(right) == len(user)
    np.testing.assert_array_equal(right[: 10 * FRAME], bot[: 10 * FRAME])
    np.testing.assert_array_equal(right[10 * FRAME :], 0)


def test_the_bot_still_queued_at_the_end_is_written_out(runtime, tmp_path):
    bot = tone(RATE, 50, 700.0)
    caller = Caller(runtime, tmp_path)
    caller.user(framed(np.full(5 * FRAME, 100, np.int16), RATE))
    caller.bot(framed(bot, RATE), RATE)
    left, right, _ = caller.finish()
    assert len(left) == 5 * FRAME + len(bot)
    np.testing.assert_array_equal(left[5 * FRAME :], 0)
    np.testing.assert_array_equal(right[5 * FRAME :], bot)


def test_a_cancelled_call_leaves_a_whole_file(runtime, tmp_path):
    caller = Caller(runtime, tmp_path)
    user = tone(RATE, 80, 300.0)  # more than a second: some of it went to the writer
    caller.user(framed(user, RATE))
    left, right, _ = caller.finish(cancel=True)
    np.testing.assert_array_equal(left, user)
    np.testing.assert_array_equal(right, 0)


def test_one_thread_writes_every_recording(runtime, tmp_path):
    callers = [Caller(runtime, tmp_path) for _ in range(6)]
    for i, caller in enumerate(callers):
        caller.user(framed(np.full(60 * FRAME, i, np.int16), RATE))
    assert flush_recordings(5)
    writers = [t for t in threading.enumerate() if t.name == "flowcat-recorder"]
    assert len(writers) == 1
    for i, caller in enumerate(callers):
        left, _, _ = caller.finish()
        assert len(left) == 60 * FRAME and set(left.tolist()) == {i}
    assert len(list(tmp_path.glob("call-*.wav"))) == 6
