"""Offline text to speech with espeak-ng, streamed into slabs as it is synthesised.

:class:`EspeakTTS` runs ``espeak-ng --stdout`` once per sentence, as an asyncio subprocess
on one of the runtime's event loops, and reads its WAV output as it comes
(:class:`WavReader`): the samples are resampled to the pipeline's output rate and cut into
20 ms :class:`~flowcat_ft.frames.TTSAudioRawFrame`\\ s (:class:`AudioFramer`), each in a
slab of the runtime's pool. espeak-ng is a Debian package (``apt-get install espeak-ng``;
``ci/system-packages.sh`` installs it).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import time
from collections import deque
from collections.abc import Iterator
from functools import partial

import numpy as np

from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.frames import (
    ControlFrame,
    Direction,
    Frame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    StartFrame,
    SystemFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from flowcat_ft.services.base import AsyncService
from flowcat_ft.slabs import SlabPool

__all__ = ["AudioFramer", "EspeakTTS", "WavReader", "split_sentences"]

FRAME_MS = 20
POOL_RESERVE = 0.25
"""The share of the slab pool that synthesis leaves free: when the server is behind and
its calls' playouts lag their clocks, speech waits for slabs rather than taking the ones
the callers' audio needs."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


def split_sentences(text: str) -> tuple[list[str], str]:
    """Split *text* into the whole sentences it holds and the unfinished rest.

    A sentence ends at ``.``, ``!`` or ``?`` followed by white space, or at a line break.
    """
    parts = _SENTENCE_END.split(text)
    rest = parts.pop()
    return [p.strip() for p in parts if p.strip()], rest


class WavReader:
    """The samples of a 16-bit mono WAV stream, from bytes fed in pieces of any size.

    The stream's data chunk may claim any length (espeak-ng writing to a pipe cannot know
    it): samples are taken until the stream ends. ``sample_rate`` is known once the
    ``fmt`` chunk has been read. One stream's state; use it from one thread at a time.
    """

    def __init__(self) -> None:
        self.sample_rate: int | None = None
        self._buffer = bytearray()
        self._in_data = False

    def feed(self, data: bytes) -> np.ndarray:
        """Take the next bytes; return the int16 samples they complete (maybe none)."""
        buffer = self._buffer
        buffer += data
        if not self._in_data and not self._read_header():
            return np.zeros(0, np.int16)
        whole = len(buffer) // 2 * 2
        samples = np.frombuffer(bytes(buffer[:whole]), "<i2").astype(np.int16)
        del buffer[:whole]
        return samples

    def _read_header(self) -> bool:
        buffer = self._buffer
        if len(buffer) < 12:
            return False
        if buffer[:4] != b"RIFF" or buffer[8:12] != b"WAVE":
            raise ValueError("not a WAV stream")
        offset = 12
        while len(buffer) >= offset + 8:
            chunk = bytes(buffer[offset : offset + 4])
            (size,) = struct.unpack_from("<I", buffer, offset + 4)
            if chunk == b"data":
                if self.sample_rate is None:
                    raise ValueError("WAV data before its fmt chunk")
                del buffer[: offset + 8]
                self._in_data = True
                return True
            if len(buffer) < offset + 8 + size:
                return False
            if chunk == b"fmt ":
                codec, channels, rate = struct.unpack_from("<HHI", buffer, offset + 8)
                bits = struct.unpack_from("<H", buffer, offset + 22)[0]
                if (codec, channels, bits) != (1, 1, 16):
                    raise ValueError(f"expected 16-bit mono PCM, got {channels} ch {bits} bit")
                self.sample_rate = rate
            offset += 8 + size + size % 2
        return False


class AudioFramer:
    """Resample one utterance to *out_rate* and cut it into 20 ms frames in slabs.

    :meth:`push` takes samples at *in_rate* as they come and returns the frames they
    complete; :meth:`finish` flushes the resampler and pads the last frame with silence.
    The resampler's delay is cut off the start, so the frames hold the utterance alone.
    """

    def __init__(self, in_rate: int, out_rate: int, pool: SlabPool) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.pool = pool
        self.frame_samples = out_rate * FRAME_MS // 1000
        self._resampler = StreamingResampler(in_rate, out_rate)
        self._skip = self._resampler.delay_samples
        self._in_total = 0
        self._out_total = 0  # samples kept, after the skipped delay
        self._pending = np.zeros(0, np.int16)

    def push(self, samples: np.ndarray) -> list[TTSAudioRawFrame]:
        self._in_total += len(samples)
        return list(self._frames(self._resample(samples)))

    def finish(self) -> list[TTSAudioRawFrame]:
        # Feed silence until the filter has given out the utterance's last sample.
        wanted = self._in_total * self.out_rate // self.in_rate - self._out_total
        tail = np.zeros(0, np.int16)
        if wanted > 0:
            flush = np.zeros(self.in_rate // 100 + self._resampler.delay_samples * 2, np.int16)
            tail = self._resample(flush)[:wanted]
        frames = list(self._frames(tail))
        if len(self._pending):
            padded = np.zeros(self.frame_samples, np.int16)
            padded[: len(self._pending)] = self._pending
            self._pending = np.zeros(0, np.int16)
            frames += self._frames(padded)
        return frames

    def _resample(self, samples: np.ndarray) -> np.ndarray:
        out = np.empty(self._resampler.out_samples(len(samples)), np.int16)
        out = out[: self._resampler.process(samples, out)]
        if self._skip:
            cut = min(self._skip, len(out))
            out = out[cut:]
            self._skip -= cut
        self._out_total += len(out)
        return out

    def _frames(self, samples: np.ndarray) -> Iterator[TTSAudioRawFrame]:
        if len(self._pending):
            samples = np.concatenate([self._pending, samples])
        n = self.frame_samples
        whole = len(samples) // n * n
        for start in range(0, whole, n):
            slab = self.pool.take()
            slab.pcm[:n] = samples[start : start + n]
            yield TTSAudioRawFrame(slab, n, self.out_rate)
        self._pending = samples[whole:].copy()


class EspeakTTS(AsyncService):
    """Speak text with espeak-ng, streaming 20 ms audio frames as they are synthesised.

    What it speaks: :class:`~flowcat_ft.frames.LLMTextFrame` pieces, gathered into
    sentences (the rest is flushed by an
    :class:`~flowcat_ft.frames.LLMFullResponseEndFrame`), and plain
    :class:`~flowcat_ft.frames.TextFrame`\\ s, each spoken whole. Sentences are spoken one
    at a time, in order: a :class:`~flowcat_ft.frames.TTSStartedFrame` when speech starts,
    each sentence's audio followed by a :class:`~flowcat_ft.frames.TTSTextFrame` of it, and
    a :class:`~flowcat_ft.frames.TTSStoppedFrame` when nothing more is waiting to be said.
    Other frames travelling downstream keep their place after the audio queued before
    them.

    *voice* and *rate_wpm* are espeak-ng's ``-v`` and ``-s``; the audio comes out at
    *sample_rate*, or the call's ``StartFrame.audio_out_sample_rate``.

    espeak-ng speaks far faster than real time. The stage reads its output only as fast
    as it would play, plus *max_ahead_secs*, counting from when the bot started speaking:
    a long reply holds a few dozen slabs, not thousands, and espeak-ng waits on its pipe
    meanwhile (so an interruption has a process to kill). It also waits while less than
    :data:`POOL_RESERVE` of the pool is free.

    An interruption kills the running espeak-ng and drops the sentences waiting (control
    frames waiting among them go on at once). An :class:`~flowcat_ft.frames.EndFrame`
    waits until the text received before it has been spoken (its unfinished last sentence
    included), then goes on after the audio; a :class:`~flowcat_ft.frames.CancelFrame`
    drops it all at once.

    Threading contract: ``_text``, ``_queue``, ``_busy``, ``_speaking`` and ``_until``
    are used on the stage thread only; the synthesis coroutines (one at a time) see only
    their arguments and hand frames, and their clock, back through :meth:`call_soon`.
    ``ahead_pauses`` and ``reserve_pauses`` (how many times synthesis paused, to let the
    caller catch up or to leave the pool's reserve free) are written by the synthesis
    coroutines, on their event loop, and read from any thread.
    """

    drain_on_end = True
    trace_kind = "tts"

    def __init__(
        self,
        voice: str = "en-us",
        rate_wpm: int = 175,
        sample_rate: int | None = None,
        *,
        executable: str = "espeak-ng",
        max_ahead_secs: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        path = shutil.which(executable)
        if path is None:
            raise FileNotFoundError(
                f"{executable} not found: install it (apt-get install espeak-ng; "
                "ci/system-packages.sh does)"
            )
        self.executable = path
        self.voice = voice
        self.rate_wpm = rate_wpm
        self.sample_rate = sample_rate
        self.max_ahead_secs = max_ahead_secs
        self._text = ""  # LLM text not yet a whole sentence
        self._queue: deque[str | Frame] = deque()  # sentences to speak, frames to pass
        self._busy = False  # a sentence is being synthesised
        self._speaking = False  # TTSStartedFrame pushed, TTSStoppedFrame not yet
        self._until = 0.0  # time.monotonic() when the audio pushed so far has played
        self.ahead_pauses = 0
        self.reserve_pauses = 0

    def on_start(self, frame: StartFrame) -> None:
        if self.sample_rate is None:
            self.sample_rate = frame.audio_out_sample_rate

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.UPSTREAM or isinstance(frame, SystemFrame):
            self.push(frame, direction)
            return
        kind = type(frame)
        if kind is LLMTextFrame:
            sentences, self._text = split_sentences(self._text + frame.text)
            self._queue.extend(sentences)
        elif kind is TextFrame:
            self._flush_text()
            if frame.text.strip():
                self._queue.append(frame.text.strip())
        else:
            if kind is LLMFullResponseEndFrame:
                self._flush_text()
            self._queue.append(frame)
        self._pump()

    def _flush_text(self) -> None:
        sentences, rest = split_sentences(self._text + "\n")
        self._queue.extend(sentences)
        self._text = rest

    def _pump(self) -> None:
        """Pass queued frames on, and start the next sentence, until one is in progress."""
        queue = self._queue
        while queue and not self._busy:
            item = queue.popleft()
            if isinstance(item, str):
                if not self._speaking:
                    self._speaking = True
                    self.push(TTSStartedFrame())
                self._busy = True
                self.start_work(partial(self._speak, text=item, until=self._until))
            else:
                if self._speaking:
                    self._stop_speaking()
                self.push(item)
        if not self._busy and self._speaking:
            self._stop_speaking()

    def _stop_speaking(self) -> None:
        self._speaking = False
        self.push(TTSStoppedFrame())

    def _spoken(self, generation: int, until: float) -> None:
        if generation == self._generation:
            self._busy = False
            self._until = until
            self._pump()

    # -- synthesis, on an event loop --------------------------------------------------------

    async def _speak(self, generation: int, text: str, until: float) -> None:
        self.annotate(**{"metrics.character_count": len(text)})
        process = None
        try:
            process = await asyncio.create_subprocess_exec(
                self.executable,
                "--stdout",
                *("-b", "1"),  # the input is UTF-8
                *("-v", self.voice),
                *("-s", str(self.rate_wpm)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            process.stdin.write(text.encode())
            process.stdin.close()
            wav = WavReader()
            framer: AudioFramer | None = None
            while data := await process.stdout.read(1 << 13):
                samples = wav.feed(data)
                if framer is None and wav.sample_rate is not None:
                    framer = AudioFramer(wav.sample_rate, self.sample_rate, self.pool)
                if not len(samples):
                    continue
                frames = framer.push(samples)
                self.emit_many(generation, frames)
                now = time.monotonic()
                until = max(until, now) + len(frames) * FRAME_MS / 1000
                if until - now > self.max_ahead_secs:  # let the caller catch up
                    self.ahead_pauses += 1
                    await asyncio.sleep(until - now - self.max_ahead_secs)
                await self._leave_the_reserve()
            code = await process.wait()
            if code != 0 or framer is None:
                error = (await process.stderr.read()).decode(errors="replace").strip()
                raise RuntimeError(f"espeak-ng failed (exit code {code}): {error}")
            frames = framer.finish()
            self.emit_many(generation, [*frames, TTSTextFrame(text)])
            until = max(until, time.monotonic()) + len(frames) * FRAME_MS / 1000
        finally:
            if process is not None and process.returncode is None:
                process.kill()  # interrupted: stop synthesising at once
                await process.wait()
            self.call_soon(self._spoken, generation, until)

    async def _leave_the_reserve(self) -> None:
        """Wait while less than :data:`POOL_RESERVE` of the pool is free: leave the slabs
        to callers' audio."""
        pool = self.pool
        if pool.available >= pool.capacity * POOL_RESERVE:
            return
        self.reserve_pauses += 1
        while pool.available < pool.capacity * POOL_RESERVE:
            await asyncio.sleep(FRAME_MS / 1000)

    # -- the end, interruptions ---------------------------------------------------------------

    def drain(self) -> None:
        self._flush_text()
        self._pump()

    def has_pending_work(self) -> bool:
        return self._busy or bool(self._queue)

    def on_interruption(self) -> None:
        self.cancel_work()
        self._text = ""
        self._busy = False
        self._until = 0.0
        waiting = [f for f in self._queue if isinstance(f, ControlFrame)]
        self._queue.clear()
        if self._speaking:
            self._stop_speaking()
        for frame in waiting:
            self.push(frame)

    def on_cancel(self) -> None:
        self.cancel_work()
        self._queue.clear()
