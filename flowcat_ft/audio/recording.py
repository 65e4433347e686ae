"""Call recording: a stereo WAV per call, the user on the left and the bot on the right.

:class:`CallRecorder` sits in the pipeline where it sees both the caller's audio and the
bot's (near the output).  The caller's audio is the recording's clock: each input frame
adds its samples on the left, and as many samples of the bot's audio on the right, taken
from a queue that the bot's output frames fill — as the output transport plays the bot
at the pace of real time, with silence when the bot has nothing to say.  An interruption
empties the queue, as it empties the transport's.  Both sides are resampled to the
recording's rate when they come at another.

The stage thread only copies samples into the call's preallocated buffers; about once a
second the filled part goes, as a copy, to the one writer thread that every recording
shares, which does the file I/O.  :func:`flush_recordings` waits until everything handed
over so far is on disk.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import wave
from pathlib import Path

import numpy as np

from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.frames import (
    AudioRawFrame,
    Direction,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from flowcat_ft.processor import FrameProcessor

__all__ = ["CallRecorder", "flush_recordings"]

logger = logging.getLogger("flowcat_ft")

_CHUNK_SECS = 1.0  # audio gathered before it goes to the writer thread


class _Writer:
    """The thread that writes every recording.

    Threading contract: ``_jobs`` (a :class:`queue.SimpleQueue`, safe from any thread) is
    the only state shared with the stage threads; they put ``(path, data)`` jobs on it:
    ``data`` is a WAV's first bytes of audio (with its rate), more audio, or None to close
    the file.  The open files (``_files``) belong to the writer thread alone.  The thread
    starts with the first job and runs, as a daemon, for the rest of the process.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._files: dict[Path, wave.Wave_write] = {}
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def open(self, path: Path, sample_rate: int) -> None:
        self._put((path, sample_rate))

    def write(self, path: Path, data: bytes) -> None:
        self._put((path, data))

    def close(self, path: Path) -> None:
        self._put((path, None))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the jobs put so far are done; False if *timeout* passed first."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._jobs.put(done)
        return done.wait(timeout)

    def _put(self, job: tuple) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._run, name="flowcat-recorder", daemon=True
                    )
                    thread.start()
                    self._thread = thread
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if isinstance(job, threading.Event):
                job.set()
                continue
            path, data = job
            try:
                self._do(path, data)
            except Exception:
                logger.exception("recording %s: cannot write", path)
                self._files.pop(path, None)

    def _do(self, path: Path, data: int | bytes | None) -> None:
        if isinstance(data, int):
            out = wave.open(str(path), "wb")  # noqa: SIM115 (open across jobs)
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(data)
            self._files[path] = out
        elif data is None:
            out = self._files.pop(path, None)
            if out is not None:
                out.close()
        elif path in self._files:
            self._files[path].writeframes(data)


# The one writer of every recording in the process (see _Writer for what it shares).
_writer = _Writer()
atexit.register(_writer.flush, 5.0)


def flush_recordings(timeout: float | None = None) -> bool:
    """Wait until every recording's audio handed over so far is written (and every file
    closed that was to be); False if *timeout* passed first."""
    return _writer.flush(timeout)


class _Side:
    """One side of a recording: its frames' samples at the recording's rate."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler: StreamingResampler | None = None
        self._scratch = np.zeros(rate // 25, np.int16)

    def convert(self, frame: AudioRawFrame) -> np.ndarray:
        """The frame's samples at the recording's rate (a view, valid until the next)."""
        if frame.codec != "pcm16" or frame.num_channels != 1:
            raise ValueError(f"CallRecorder takes mono pcm16 audio, not {frame!r}")
        if frame.sample_rate == self.rate:
            return frame.samples
        resampler = self._resampler
        if resampler is None or resampler.in_rate != frame.sample_rate:
            resampler = self._resampler = StreamingResampler(frame.sample_rate, self.rate)
        count = resampler.out_samples(frame.num_frames)
        if count > len(self._scratch):
            self._scratch = np.zeros(count, np.int16)
        resampler.process(frame.samples, self._scratch)
        return self._scratch[:count]


class CallRecorder(FrameProcessor):
    """Record the call as a stereo 16-bit WAV at *sample_rate* in *directory*.

    The file, ``<directory>/call-<date>-<time>-<call id>.wav`` (:attr:`path`), is made when
    the call starts and closed when it ends or is cancelled; at the end the bot's audio
    still queued is written out, against silence from the user.  Mono pcm16 input and
    output audio frames are recorded (see the module docstring for how they line up) and
    every frame passes on unchanged.
    """

    def __init__(self, directory: str | Path, sample_rate: int = 16000) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.sample_rate = sample_rate
        self.path: Path | None = None
        self._user = _Side(sample_rate)
        self._bot = _Side(sample_rate)
        chunk = round(_CHUNK_SECS * sample_rate)
        self._chunk = np.zeros((chunk, 2), np.int16)  # left: user, right: bot
        self._filled = 0
        # The bot's audio not yet lined up with the user's: _queue[_head:_tail].
        self._queue = np.zeros(chunk, np.int16)
        self._head = self._tail = 0

    def on_start(self, frame: StartFrame) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = self.directory / f"call-{stamp}-{self.call.id}.wav"
        _writer.open(self.path, self.sample_rate)

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM and self.path is not None:
            if isinstance(frame, InputAudioRawFrame):
                self._record(self._user.convert(frame))
            elif isinstance(frame, OutputAudioRawFrame):
                self._enqueue(self._bot.convert(frame))
        self.push(frame, direction)

    def on_interruption(self) -> None:
        self._head = self._tail = 0

    def on_end(self) -> None:
        if self.path is not None:
            self._record(np.zeros(self._tail - self._head, np.int16))
            self._close()

    def on_cancel(self) -> None:
        if self.path is not None:
            self._close()

    def _enqueue(self, samples: np.ndarray) -> None:
        """Queue the bot's samples, making room at the front or growing the queue."""
        n = len(samples)
        if self._tail + n > len(self._queue):
            queued = self._tail - self._head
            if queued + n > len(self._queue):
                bigger = np.zeros(2 * (queued + n), np.int16)
                bigger[:queued] = self._queue[self._head : self._tail]
                self._queue = bigger
            else:
                self._queue[:queued] = self._queue[self._head : self._tail]
            self._head, self._tail = 0, queued
        self._queue[self._tail : self._tail + n] = samples
        self._tail += n

    def _record(self, user: np.ndarray) -> None:
        """Add the user's samples on the left and as many of the bot's on the right."""
        start = 0
        while start < len(user):
            take = min(len(user) - start, len(self._chunk) - self._filled)
            rows = self._chunk[self._filled : self._filled + take]
            rows[:, 0] = user[start : start + take]
            bot = min(take, self._tail - self._head)
            rows[:bot, 1] = self._queue[self._head : self._head + bot]
            rows[bot:, 1] = 0
            self._head += bot
            self._filled += take
            start += take
            if self._filled == len(self._chunk):
                self._hand_over()

    def _hand_over(self) -> None:
        if self._filled:
            _writer.write(self.path, self._chunk[: self._filled].tobytes())
            self._filled = 0

    def _close(self) -> None:
        self._hand_over()
        _writer.close(self.path)
        self.path = None
