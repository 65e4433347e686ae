"""The TTS service: the LLM's text in, audio in slabs out, with the words placed where the
caller will hear them.

:class:`TTSService` is the protocol-independent part. It gathers the streamed
:class:`~flowcat_ft.frames.LLMTextFrame`\\ s of a response into sentences
(:class:`SentenceSplitter`) and hands them, as they complete, to one *turn* of synthesis:
a coroutine (:meth:`TTSService._synthesize`, written by each protocol's client) that reads
the turn's text from a :class:`TextFeed` and hands back audio and word timings as they
arrive. The base class turns those into frames:

- :class:`~flowcat_ft.frames.TTSStartedFrame` before the first audio of a turn;
- :class:`~flowcat_ft.frames.TTSAudioRawFrame`\\ s in slabs of the runtime's pool, at the
  pipeline's output rate (:class:`AudioChunker`, which resamples with
  :class:`~flowcat_ft.audio.resample.StreamingResampler` if the provider's rate differs);
- a :class:`~flowcat_ft.frames.TTSTextFrame` for each word (or sentence, where the provider
  gives no timings) just before the audio that starts speaking it (:class:`WordTimeline`),
  so that the assistant aggregator at the output can tell what the caller heard;
- :class:`~flowcat_ft.frames.TTSStoppedFrame` and then the response's
  :class:`~flowcat_ft.frames.LLMFullResponseEndFrame`, held back until the turn's audio
  is out.

An interruption cancels the turn (a client cancels its provider context or closes its
connection), forgets the text not yet spoken and drops whatever the turn still produces; the
runtime drops the bot audio already queued in the rings (its slabs go back to the pool).
A failed turn sends an error frame upstream and ends the turn; the call goes on.

An :class:`~flowcat_ft.frames.EndFrame` does not cut the reply off: the text received
before it (a response without its end frame included) is spoken, and the EndFrame goes on
after its audio (see :attr:`~flowcat_ft.services.base.AsyncService.drain_on_end`). A
:class:`~flowcat_ft.frames.CancelFrame` drops it all at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.frames import (
    Direction,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from flowcat_ft.services.llm.frames import TTSSpeakFrame
from flowcat_ft.services.net.service import CloudService
from flowcat_ft.slabs import PoolExhaustedError, SlabPool

__all__ = [
    "AudioChunker",
    "SentenceSplitter",
    "TTSService",
    "TextFeed",
    "TurnAudio",
    "WordTimeline",
    "audio_frame",
]

# Sentence-ending punctuation (with the CJK full stop, exclamation and question marks),
# closing quotes or brackets, then white space; or a newline.
_SENTENCE_END = re.compile("[.!?;:\u3002\uff01\uff1f\u2026]+[\"')\\]]*\\s+|\n+")


class SentenceSplitter:
    """Streamed text in, whole sentences out (a sentence ends at ``.``, ``!``, ``?``...
    followed by white space, or at a newline), so each reaches the TTS with its prosody."""

    def __init__(self, min_chars: int = 2) -> None:
        self._buffer = ""
        self.min_chars = min_chars

    def add(self, text: str) -> list[str]:
        self._buffer += text
        out = []
        start = 0
        for match in _SENTENCE_END.finditer(self._buffer):
            sentence = self._buffer[start : match.end()].strip()
            if len(sentence) >= self.min_chars:
                out.append(sentence)
                start = match.end()
        self._buffer = self._buffer[start:]
        return out

    def flush(self) -> str:
        rest, self._buffer = self._buffer.strip(), ""
        return rest

    def clear(self) -> None:
        self._buffer = ""


class AudioChunker:
    """A provider's 16-bit PCM, in pieces of any size, out as arrays of at most
    ``max_samples`` samples at ``out_rate``. Counts the provider's samples, to time words.
    """

    def __init__(self, in_rate: int, out_rate: int, max_samples: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.max_samples = max_samples
        self._odd = b""
        self._resampler = (
            StreamingResampler(in_rate, out_rate, max_samples) if in_rate != out_rate else None
        )
        self.samples_in = 0

    @property
    def seconds(self) -> float:
        """Seconds of the provider's audio received so far."""
        return self.samples_in / self.in_rate

    def feed(self, pcm: bytes) -> list[np.ndarray]:
        data = self._odd + pcm
        whole = len(data) // 2 * 2
        self._odd = data[whole:]
        if not whole:
            return []
        samples = np.frombuffer(data[:whole], dtype="<i2")
        self.samples_in += len(samples)
        if self._resampler is not None:
            out = np.empty(self._resampler.out_samples(len(samples)), dtype=np.int16)
            n = self._resampler.process(samples.astype(np.int16, copy=False), out)
            samples = out[:n]
        step = self.max_samples
        return [samples[i : i + step] for i in range(0, len(samples), step)]


class WordTimeline:
    """Words with their start times (seconds from the start of the turn's audio), handed
    out once the audio reaching them is about to be emitted."""

    def __init__(self) -> None:
        self._words: deque[tuple[float, str]] = deque()

    def add(self, words: Iterable[tuple[float, str]]) -> None:
        for start, word in words:
            if word.strip():
                self._words.append((float(start), word))

    def due(self, until: float) -> list[str]:
        """Words starting before ``until`` seconds (in the order they came)."""
        out = []
        while self._words and self._words[0][0] < until:
            out.append(self._words.popleft()[1])
        return out

    def rest(self) -> list[str]:
        out = [w for _, w in self._words]
        self._words.clear()
        return out


_END = object()


class TextFeed:
    """A turn's text, handed from the stage thread to the turn's coroutine on the loop.

    :meth:`put` and :meth:`end` are called on the stage thread; :meth:`get` is awaited on
    the loop and returns None once the turn's text has all been read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.ended = False
        # Characters put so far: written on the stage thread; read on the loop once get()
        # has returned None, or, at an interruption, as far as the loop has seen them.
        self.characters = 0
        self._drained = False  # get() has returned the end (on the loop)

    def put(self, text: str) -> None:
        self.characters += len(text)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, text)

    def end(self) -> None:
        self.ended = True
        self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)

    async def get(self) -> str | None:
        """The next piece of text, or None once the turn's text has all been read (and on
        every call after that)."""
        if self._drained:
            return None
        item = await self._queue.get()
        if item is _END:
            self._drained = True
            return None
        return item  # type: ignore[return-value]


@dataclass
class TurnAudio:
    """One turn's audio state, on the loop: the chunker, the words and what was sent."""

    chunker: AudioChunker
    words: WordTimeline = field(default_factory=WordTimeline)
    started: bool = False


class TTSService(CloudService):
    """See the module docstring. ``sample_rate`` is the provider's output rate (the
    audio is resampled to the pipeline's ``audio_out_sample_rate`` when they differ);
    ``aggregate_sentences=False`` hands text on as it comes (for providers that buffer
    themselves)."""

    cost = 0.5
    drain_on_end = True
    trace_kind = "tts"

    def __init__(
        self,
        *,
        sample_rate: int,
        aggregate_sentences: bool = True,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(name=name, ssl_context=ssl_context, ca_file=ca_file)
        self.sample_rate = sample_rate
        self.aggregate_sentences = aggregate_sentences
        self.out_rate = sample_rate
        self._splitter = SentenceSplitter()
        self._feed: TextFeed | None = None
        self._in_response = False
        self._trailing: dict[int, list[Frame]] = {}  # frames to push after a turn's audio
        self._turn_lock = asyncio.Lock()  # one turn at a time, in order (on the loop)

    def on_start(self, frame: StartFrame) -> None:
        self.out_rate = frame.audio_out_sample_rate

    # -- frames ----------------------------------------------------------------------------

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            kind = type(frame)
            if kind is LLMFullResponseStartFrame:
                self._in_response = True
            elif kind is LLMTextFrame or kind is TextFrame:
                self._text(frame.text)
                return
            elif kind is TTSSpeakFrame:
                if self._in_response:
                    self._text(frame.text + " ")
                    self._flush_text()
                else:
                    self._say(frame.text, ())
                return
            elif kind is LLMFullResponseEndFrame:
                self._in_response = False
                self._flush_text()
                self._end_turn([frame])
                return
        self.push(frame, direction)

    def _text(self, text: str) -> None:
        if not self.aggregate_sentences:
            if text:
                self._send(text)
            return
        for sentence in self._splitter.add(text):
            self._send(sentence)

    def _flush_text(self) -> None:
        rest = self._splitter.flush()
        if rest:
            self._send(rest)

    def _say(self, text: str, trailing: Iterable[Frame]) -> None:
        if text.strip():
            self._send(text.strip())
        self._end_turn(list(trailing))

    def _send(self, text: str) -> None:
        if self._feed is None:
            feed = self._feed = TextFeed(self.event_loop.loop)
            self.start_work(lambda generation: self._turn(generation, feed))
        self._feed.put(text)

    def _end_turn(self, trailing: list[Frame]) -> None:
        feed, self._feed = self._feed, None
        if feed is None:
            for frame in trailing:
                self.push(frame)
            return
        self._trailing[id(feed)] = trailing
        feed.end()

    # -- a turn, on the loop ---------------------------------------------------------------------

    async def _turn(self, generation: int, feed: TextFeed) -> None:
        turn = TurnAudio(AudioChunker(self.sample_rate, self.out_rate, self._max_samples()))
        async with self._turn_lock:
            try:
                await self._synthesize(generation, feed, turn)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                self.report_error(message, generation=generation, fallback=False)
                while await feed.get() is not None:  # let the rest of the turn's text go by
                    pass
            finally:
                self.annotate(**{"metrics.character_count": feed.characters})
            for word in turn.words.rest():
                self.emit(generation, TTSTextFrame(word))
            if turn.started:
                self.emit(generation, TTSStoppedFrame())
            self.call_soon(self._turn_done, generation, feed)

    def _turn_done(self, generation: int, feed: TextFeed) -> None:
        trailing = self._trailing.pop(id(feed), ())
        if generation == self._generation:
            for frame in trailing:
                self.push(frame)

    def _max_samples(self) -> int:
        try:
            return self.pool.slab_bytes // 2
        except RuntimeError:
            return 1920

    async def _synthesize(self, generation: int, feed: TextFeed, turn: TurnAudio) -> None:
        """Speak the turn's text (read with ``await feed.get()`` until None), handing audio
        to :meth:`audio` and word timings to ``turn.words`` as they arrive."""
        raise NotImplementedError

    async def audio(self, generation: int, turn: TurnAudio, pcm: bytes) -> None:
        """Emit ``pcm`` (16-bit, the provider's rate) as audio frames, each preceded by the
        words that start in it."""
        chunker = turn.chunker
        before = chunker.seconds
        chunks = chunker.feed(pcm)
        if not chunks:
            return
        if not turn.started:
            turn.started = True
            self.emit(generation, TTSStartedFrame())
        pool = self.pool
        span = chunker.seconds - before
        total = sum(len(c) for c in chunks)
        done = 0
        for chunk in chunks:
            done += len(chunk)
            until = before + span * done / total
            for word in turn.words.due(until):
                self.emit(generation, TTSTextFrame(word))
            frame = await audio_frame(pool, chunk, self.out_rate)
            if frame is not None:
                self.emit(generation, frame)

    # -- the end, interruptions ----------------------------------------------------------------

    def drain(self) -> None:
        """Speak what came before the EndFrame: end the turn in progress."""
        self._in_response = False
        self._flush_text()
        self._end_turn([])

    def on_interruption(self) -> None:
        super().on_interruption()
        self._splitter.clear()
        self._feed = None
        self._in_response = False
        self._trailing.clear()


async def audio_frame(pool: SlabPool, samples: np.ndarray, rate: int) -> TTSAudioRawFrame | None:
    """A frame holding ``samples`` in a slab; waits a little for one if the pool is empty."""
    n = len(samples)
    if n * 2 > pool.slab_bytes:
        raise ValueError(f"{n} samples do not fit a {pool.slab_bytes}-byte slab")
    for _ in range(50):
        try:
            slab = pool.take()
        except PoolExhaustedError:
            await asyncio.sleep(0.01)
            continue
        slab.pcm[:n] = samples
        return TTSAudioRawFrame(slab, n, rate)
    return None
