"""Offline speech to text: the caller's turns, streamed to PocketSphinx as they are spoken.

:class:`SphinxSTT` takes the caller's 16 kHz audio from a
:class:`~flowcat_ft.frames.UserStartedSpeakingFrame` (from a VAD or turn detector ahead of
it; with the second or so of audio before it, since speech is detected a little after it
starts) to the next :class:`~flowcat_ft.frames.UserStoppedSpeakingFrame`, and streams it,
a batch at a time, to a worker of the runtime's
:class:`~flowcat_ft.services.offline.sphinx_pool.SphinxPool`
(:mod:`~flowcat_ft.services.offline.sphinx_pool`). The worker decodes each batch as it
comes and says what it has heard so far; the words on which its last two answers agree go
downstream as an :class:`~flowcat_ft.frames.InterimTranscriptionFrame` whenever they
change (what a barge-in is judged on: see :mod:`flowcat_ft.services.barge_in`), and the
utterance's words as a :class:`~flowcat_ft.frames.TranscriptionFrame` once the turn ends.

Free dictation of synthetic speech is poor with PocketSphinx's small English model, so the
stage is usually constrained by a :class:`~flowcat_ft.services.offline.sphinx_pool.Grammar`
of the phrases the conversation listens for (measured here: "please tell me the weather"
came back as "oh please tell the where there" free, and exact with a grammar).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import numpy as np

from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.frames import (
    Direction,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.metrics import Histogram
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.services.offline.sphinx_pool import (
    SAMPLE_RATE,
    Grammar,
    Recognition,
    SphinxPool,
    SphinxStream,
    SphinxWorkerError,
)

__all__ = ["SphinxSTT"]

logger = logging.getLogger("flowcat_ft.services.sphinx")


@dataclass(slots=True)
class _Utterance:
    """An utterance whose result is awaited: when it ended, and the result to come."""

    ended_ns: int
    result: Future[Recognition]


class SphinxSTT(FrameProcessor):
    """Transcribe the caller's speech, one turn at a time, with PocketSphinx.

    *phrases* (or a :class:`~flowcat_ft.services.offline.sphinx_pool.Grammar`) constrain
    what can be heard; None is free dictation (decoded at the end of the turn, with no
    interim results). The stage keeps the last *preroll_secs* of audio before a
    :class:`~flowcat_ft.frames.UserStartedSpeakingFrame`, since a detector reports speech
    a little after it starts (longer still for a barge-in), and sends it with the turn's
    first batch; then a batch every *batch_secs*. A turn longer than *max_segment_secs* is
    cut into utterances of that length. Audio at a rate other than 16 kHz is kept at its
    rate and resampled a batch at a time, as it is sent (the few milliseconds of a turn's
    trailing silence that the filter still holds at its end are not sent).
    The caller's audio is consumed here unless *audio_passthrough* (audio going on would
    reach the output, and the caller would hear themselves).

    The utterances go to *workers*, or to the runtime's shared pool
    (:meth:`~flowcat_ft.services.offline.sphinx_pool.SphinxPool.shared`, with
    *pool_size* workers if this stage makes it). Nothing final is pushed for an utterance
    in which nothing in the grammar was heard. An interruption changes nothing here: the
    caller's speech is never stale. If a worker dies, the utterances it was decoding end
    with a (not fatal) error frame, and the call goes on.

    Transcripts keep the order in which they were spoken; ``latency`` records the time
    from the end of each utterance to its result (ns).

    Threading contract: every attribute is used on the stage thread only; what the worker
    heard comes back through :meth:`call_soon`.
    """

    trace_kind = "stt"

    def __init__(
        self,
        phrases: Iterable[str] | Grammar | None = None,
        *,
        workers: SphinxPool | None = None,
        pool_size: int | None = None,
        preroll_secs: float = 1.0,
        batch_secs: float = 0.1,
        max_segment_secs: float = 30.0,
        audio_passthrough: bool = False,
        language: str = "en-US",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if phrases is None or isinstance(phrases, Grammar):
            self.grammar = phrases
        else:
            self.grammar = Grammar.from_phrases(phrases)
        self.workers = workers
        self.pool_size = pool_size
        self.audio_passthrough = audio_passthrough
        self.language = language
        self.latency = Histogram()
        self.preroll_secs = preroll_secs
        self.batch_secs = batch_secs
        self.max_segment_secs = max_segment_secs
        self._preroll: deque[np.ndarray] = deque()
        self._preroll_samples = 0
        self._stream: SphinxStream | None = None  # while the user speaks
        self._batch: list[np.ndarray] = []  # audio of the stream not yet sent
        self._batch_samples = 0
        self._segment_samples = 0
        self._segments = 0
        self._hyp = ""  # the worker's last answer for the open stream
        self._interim = ""  # the interim transcript last pushed
        self._results: deque[_Utterance] = deque()  # in the order spoken
        # The caller's audio is kept at its own rate (from its first frame): the limits in
        # it, and the resampler that takes each stream's batches to 16 kHz.
        self._rate = 0
        self._resampler: StreamingResampler | None = None
        self._set_rate(SAMPLE_RATE)

    def on_start(self, frame: StartFrame) -> None:
        if self.workers is None:
            self.workers = SphinxPool.shared(self.call, self.pool_size)
        self.workers.start()  # load the models before the caller first speaks

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            if isinstance(frame, InputAudioRawFrame):
                self._audio(frame)
                if not self.audio_passthrough:
                    return
            elif isinstance(frame, UserStartedSpeakingFrame):
                self.push(frame, direction)
                self._finish()
                self._open()
                return
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._finish()
        self.push(frame, direction)

    def on_end(self) -> None:
        self._cancel()

    def on_cancel(self) -> None:
        self._cancel()

    # -- audio ----------------------------------------------------------------------------

    def _audio(self, frame: InputAudioRawFrame) -> None:
        if frame.codec != "pcm16" or frame.num_channels != 1:
            raise ValueError(f"{self.name} takes mono pcm16 audio, not {frame!r}")
        if frame.sample_rate != self._rate:
            self._set_rate(frame.sample_rate)
        samples = frame.samples.copy()  # the slab goes back to the pool
        if self._stream is not None:
            self._batch.append(samples)
            self._batch_samples += len(samples)
            self._segment_samples += len(samples)
            if self._segment_samples >= self._segment_limit:
                self._finish()
                self._open()
            elif self._batch_samples >= self._batch_limit:
                self._send_batch()
            return
        self._preroll.append(samples)
        self._preroll_samples += len(samples)
        while self._preroll_samples - len(self._preroll[0]) >= self._preroll_limit:
            self._preroll_samples -= len(self._preroll.popleft())

    def _set_rate(self, rate: int) -> None:
        """The caller's audio comes at *rate*: what was kept at another rate goes."""
        self._rate = rate
        self._preroll.clear()
        self._preroll_samples = 0
        self._preroll_limit = round(self.preroll_secs * rate)
        self._batch_limit = max(1, round(self.batch_secs * rate))
        self._segment_limit = round(self.max_segment_secs * rate)
        self._resampler = None
        if rate != SAMPLE_RATE:
            frame = self._batch_limit + self._preroll_limit
            self._resampler = StreamingResampler(rate, SAMPLE_RATE, frame)
        if self._stream is not None:
            self._batch.clear()
            self._batch_samples = self._segment_samples = 0

    # -- utterances -------------------------------------------------------------------------

    def _open(self) -> None:
        self._segments += 1
        tag = f"call{self.call.id}-seg{self._segments}"
        on_hyp = partial(self.call_soon, self._heard_so_far, self._segments)
        self._stream = self.workers.open(self.grammar, tag, on_hyp)
        self._batch = list(self._preroll)
        self._batch_samples = self._segment_samples = self._preroll_samples
        self._preroll.clear()
        self._preroll_samples = 0
        self._hyp = self._interim = ""
        if self._resampler is not None:
            self._resampler.reset()
        self._send_batch()

    def _send_batch(self) -> None:
        if self._batch:
            self._stream.send(self._take_batch())

    def _take_batch(self) -> bytes:
        """The audio not yet sent, at 16 kHz."""
        if not self._batch:
            return b""
        samples = np.concatenate(self._batch)
        self._batch.clear()
        self._batch_samples = 0
        resampler = self._resampler
        if resampler is not None:
            out = np.empty(resampler.out_samples(len(samples)), np.int16)
            samples = out[: resampler.process(samples, out)]
        return samples.tobytes()

    def _finish(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        result = stream.finish(self._take_batch())
        self._results.append(_Utterance(time.perf_counter_ns(), result))
        result.add_done_callback(lambda _: self.call_soon(self._deliver))

    def _cancel(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()
        self._batch.clear()

    def _heard_so_far(self, segment: int, hyp: str) -> None:
        if segment != self._segments or self._stream is None:
            return  # an utterance that has ended: its result follows
        stable = _common_words(self._hyp, hyp)
        self._hyp = hyp
        if stable and stable != self._interim:
            self._interim = stable
            self.push(InterimTranscriptionFrame(stable, "", _now(), self.language))

    def _deliver(self) -> None:
        """Push the results that have come, in the order the utterances were spoken."""
        results = self._results
        while results and results[0].result.done():
            utterance = results.popleft()
            self.latency.add(time.perf_counter_ns() - utterance.ended_ns)
            try:
                recognition = utterance.result.result()
            except SphinxWorkerError as error:
                logger.warning("%s: %s", self.name, error)
                self.push_error(f"{self.name}: SphinxWorkerError: {error}")
                continue
            logger.debug("%s: %r in %.0f ms", self.name, recognition.text, recognition.decode_ms)
            if recognition.text:
                self.push(TranscriptionFrame(recognition.text, "", _now(), self.language))


def _common_words(a: str, b: str) -> str:
    """The words *a* and *b* begin with alike."""
    same = []
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        same.append(x)
    return " ".join(same)


def _now() -> str:
    return datetime.now(UTC).isoformat()
