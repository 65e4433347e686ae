"""Voice activity detection with the Silero VAD model, run by onnxruntime.

The model is the ONNX file shipped in the ``silero-vad`` wheel
(``silero_vad/data/silero_vad.onnx``).  That package's ``__init__`` imports torch, so it is
located with :func:`importlib.util.find_spec` and never imported.

The model judges windows of 512 samples at 16 kHz (256 at 8 kHz), each preceded by the
last 64 (32) samples of the window before it, and carries a recurrent state of shape
``(2, batch, 128)`` from one window to the next: one stream's state lives in its
:class:`SileroVADAnalyzer`.  It needs that context: fed bare windows, its probability of
speech stayed under 0.12 on clear 16 kHz speech.  The model's output, the window's
probability of speech, goes with the window's level to the
:class:`~flowcat_ft.audio.vad.VADStateMachine` shared with the energy analyzer.  That
probability trails the end of speech (by up to 4 windows of bare background); the state
machine ends speech where the level falls back to the noise floor instead.

Batching: one run of the model over B windows, each with its own state, costs much less
than B runs over one.  On 3.13t, one thread (``python -m bench.audio``, 2 cores): a call's
20 ms frame (0.625 windows) costs about 115 µs with per-call analyzers (the model's run
alone takes some 140 µs a window), and with batched ones 66 µs among 4 calls, 50 µs among
16 and 44 µs among 64; the calls one core carries through µ-law decoding, resampling and
this VAD rise from about 100 to 170-210.  A *batched* analyzer therefore leaves its
windows in a batch shared by every batched analyzer on the same thread (a stage thread
analyzes the audio of all its calls), and the batch runs (every waiting window, in passes
that take the oldest window of each stream) once its oldest window has waited
:data:`MAX_WAIT` (checked at every analysis on the thread), once a stream has
:data:`MAX_QUEUED` windows waiting, or when it is full.  With frames arriving paced, a
batch gathers every call's windows of the last 10 ms; when the stage thread works off a
backlog, several frames of one call in a row, each stream leaves several windows and every
pass still takes one window of each.  The price: a batched analyzer's state trails its
audio, by about 10 ms in time and at most :data:`MAX_QUEUED` windows (256 ms) of audio.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime

from flowcat_ft.audio.vad import StateMachineAnalyzer, VADParams, VADState, level_db

__all__ = [
    "BATCH_ROWS",
    "MAX_QUEUED",
    "MAX_WAIT",
    "SAMPLE_RATES",
    "SileroVADAnalyzer",
    "model_path",
]

SAMPLE_RATES = (8000, 16000)
"""The rates the model takes."""

BATCH_ROWS = 256
"""Windows a thread's batch holds; a full batch runs."""

MAX_QUEUED = 8
"""Windows one batched stream may leave waiting (256 ms of audio); its next one runs the
batch first."""

MAX_WAIT = 0.010
"""Seconds the oldest window in a batch may wait: the next analysis on the thread after
that runs the batch."""

_WINDOW = {16000: 512, 8000: 256}
_CONTEXT = {16000: 64, 8000: 32}
_STATE_SHAPE = (2, 128)  # one stream's share of the model's state (2, batch, 128)


def model_path() -> Path:
    """The Silero VAD ONNX model inside the installed ``silero-vad`` package."""
    spec = importlib.util.find_spec("silero_vad")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "Silero VAD needs the silero-vad wheel: pip install --no-deps silero-vad"
        )
    return Path(spec.submodule_search_locations[0], "data", "silero_vad.onnx")


# One inference session for the whole process: onnxruntime sessions may run on several
# threads at once.  Made on first use, under _session_lock.
_session: onnxruntime.InferenceSession | None = None
_session_lock = threading.Lock()


def _shared_session() -> onnxruntime.InferenceSession:
    global _session
    with _session_lock:
        if _session is None:
            options = onnxruntime.SessionOptions()
            # The runtime owns the cores: no thread pools inside the model.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            _session = onnxruntime.InferenceSession(
                model_path(), options, providers=["CPUExecutionProvider"]
            )
        return _session


class _Batch:
    """Windows of several streams at one rate, waiting to be judged together.

    ``queue`` lists the waiting windows in the order they came, as ``(analyzer, row,
    level)``: the window is ``windows[row]`` (row is its place in the queue) and the
    analyzer None once its stream was reset.  :meth:`run` judges them in passes, each pass
    one run of the model over the oldest waiting window of every stream: a stream's
    windows go through the model in order, each with the state the one before left.

    Threading: used by one thread only (see :func:`_thread_batch`).
    """

    def __init__(self, sample_rate: int, rows: int) -> None:
        self.sample_rate = np.array(sample_rate, dtype=np.int64)
        self.windows = np.zeros((rows, _CONTEXT[sample_rate] + _WINDOW[sample_rate]), np.float32)
        self.states = np.zeros((_STATE_SHAPE[0], rows, _STATE_SHAPE[1]), np.float32)
        self.queue: list[tuple[SileroVADAnalyzer | None, int, float]] = []
        self.since = 0.0  # when the oldest waiting window came (time.monotonic)
        self.session = _shared_session()

    def add(self, analyzer: SileroVADAnalyzer, window: np.ndarray, level: float) -> None:
        """Queue a copy of *window*, the analyzer's next, and its level (a full batch runs
        first)."""
        if len(self.queue) == len(self.windows):
            self.run()
        row = len(self.queue)
        if not row:
            self.since = time.monotonic()
        self.windows[row] = window
        self.queue.append((analyzer, row, level))

    def due(self) -> bool:
        """Whether the oldest waiting window has waited :data:`MAX_WAIT`."""
        return bool(self.queue) and time.monotonic() - self.since >= MAX_WAIT

    def discard(self, analyzer: SileroVADAnalyzer) -> None:
        """Forget the analyzer's waiting windows (their rows stay, unused)."""
        self.queue = [(None if a is analyzer else a, row, level) for a, row, level in self.queue]

    def run(self) -> None:
        """Judge every waiting window and give each stream its results, in order."""
        waiting = [entry for entry in self.queue if entry[0] is not None]
        self.queue = []
        while waiting:
            this_pass, later, seen = [], [], set()
            for entry in waiting:
                (later if entry[0] in seen else this_pass).append(entry)
                seen.add(entry[0])
            n = len(this_pass)
            states = self.states[:, :n]
            for i, (analyzer, _, _) in enumerate(this_pass):
                states[:, i] = analyzer._model_state
            rows = [row for _, row, _ in this_pass]
            # Rows rise through the queue: ending at n - 1, they are 0..n - 1.  (A view of
            # them runs faster than a gathered copy, by some 10 µs.)
            windows = self.windows[:n] if rows[-1] == n - 1 else self.windows[rows]
            inputs = {"input": windows, "state": states, "sr": self.sample_rate}
            probabilities, states = self.session.run(None, inputs)
            for i, (analyzer, _, level) in enumerate(this_pass):
                analyzer._model_state[:] = states[:, i]
                analyzer._take_result(float(probabilities[i, 0]), level)
            waiting = later


# Each thread's batches, by sample rate: the batched analyzers that run on a thread share them.
_local = threading.local()


def _thread_batch(sample_rate: int) -> _Batch:
    batches = getattr(_local, "batches", None)
    if batches is None:
        batches = _local.batches = {}
    batch = batches.get(sample_rate)
    if batch is None:
        batch = batches[sample_rate] = _Batch(sample_rate, BATCH_ROWS)
    return batch


class SileroVADAnalyzer(StateMachineAnalyzer):
    """Detect speech in one stream of int16 frames with the Silero VAD model.

    Frames of any length go to :meth:`analyze`; the analyzer cuts them into the model's
    windows (32 ms at 16 kHz and 8 kHz), and each window's speech probability and level
    drive the same :class:`~flowcat_ft.audio.vad.VADStateMachine` (and so the same
    :class:`~flowcat_ft.audio.vad.VADParams`) as
    :class:`~flowcat_ft.audio.vad.EnergyVADAnalyzer`.

    By default each window is judged within the :meth:`analyze` call that completes it.
    With ``batched=True`` the windows of every batched analyzer on the same thread are
    judged together (see the module docstring): cheaper per window, a little later.

    Threading: an instance holds one stream's state and is not locked; use it from one
    thread at a time (for a batched analyzer, always the same thread).
    """

    def __init__(
        self, sample_rate: int, params: VADParams | None = None, *, batched: bool = False
    ) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"Silero VAD takes {SAMPLE_RATES} Hz, not {sample_rate}")
        super().__init__(sample_rate, params)
        self.batched = batched
        self._context = _CONTEXT[sample_rate]
        self._size = _WINDOW[sample_rate]
        # The model's input: the previous window's last samples, then this window's.
        self._window = np.zeros(self._context + self._size, np.float32)
        self._model_state = np.zeros(_STATE_SHAPE, np.float32)
        # A batched analyzer finds its thread's batch on its first analysis.
        self._batch: _Batch | None = None if batched else _Batch(sample_rate, 1)
        self._queued = 0  # our windows waiting in the batch
        self.reset()

    def reset(self) -> None:
        """Forget the stream (and the windows it left waiting for the model)."""
        if self._queued:
            self._batch.discard(self)
            self._queued = 0
        self._machine.reset()
        self._window[:] = 0.0
        self._model_state[:] = 0.0
        self._filled = 0  # samples of the current window received so far

    def analyze(self, pcm: np.ndarray) -> VADState:
        """Take the next frame of int16 samples and return the state after the windows
        judged so far: after this frame, unless the analyzer is batched."""
        if self._batch is None:
            self._batch = _thread_batch(self.sample_rate)
        start = 0
        while start < len(pcm):
            take = min(self._size - self._filled, len(pcm) - start)
            begin = self._context + self._filled
            part = self._window[begin : begin + take]
            part[:] = pcm[start : start + take]
            part *= 1.0 / 32768.0
            self._filled += take
            start += take
            if self._filled == self._size:
                self._submit()
        batch = self._batch
        if batch.queue and (not self.batched or batch.due()):
            batch.run()
        return self._machine.state

    def flush(self) -> None:
        """Judge every window waiting in this analyzer's batch now (for a batched analyzer,
        the windows of every batched analyzer on this thread)."""
        if self._batch is not None:
            self._batch.run()

    def _submit(self) -> None:
        """Queue the full window for the model, then keep its tail as the next context."""
        if self._queued == MAX_QUEUED:
            self._batch.run()
        samples = self._window[self._context :]
        level = level_db(float(np.dot(samples, samples)) / self._size)
        self._batch.add(self, self._window, level)
        self._queued += 1
        self._window[: self._context] = self._window[-self._context :]
        self._filled = 0

    def _take_result(self, probability: float, level: float) -> None:
        """The model's verdict on our oldest waiting window, whose level was *level*."""
        self._queued -= 1
        self._machine.update(probability, level, self._size)
