"""Audio between aiortc and PCM16 bytes: the two ends of a WebRTC peer's media.

Uses aiortc and PyAV, so it runs only where aiortc imports (the companion process, and
the test and benchmark peers), never in the free-threaded server. They are imported on
first use (``PcmTrack`` is made when first asked for: its base class is aiortc's), so that
importing this module needs neither.

- :class:`PcmTrack`: an outgoing aiortc audio track fed with PCM16 mono bytes. It plays
  20 ms frames from a queue at real time and silence when the queue is empty; ``clear()``
  drops what has not been played yet (an interruption), and marks report when the audio
  queued before them has been played. It hands the Opus encoder 48 kHz frames, the same
  on both channels.
- :func:`pcm_frames`: a received audio track (aiortc decodes Opus to 48 kHz frames) as
  PCM16 mono 20 ms frames at the rate asked for, resampled by PyAV.

Both resample without asking PyAV for fixed-size frames: a resampler that must emit whole
frames holds back a whole frame (20 ms) to cover its filter's delay (about 1 ms), so each
stage would add 20 ms to the call's round trip.

Everything here runs on the one asyncio loop of its process (aiortc's).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av
    from aiortc.mediastreams import MediaStreamTrack

__all__ = ["FRAME_SECS", "PcmTrack", "pcm_frames"]

FRAME_SECS = 0.02
"""Audio moves in 20 ms frames, both ways."""

OPUS_RATE = 48000  # what aiortc's Opus encoder takes: 48 kHz s16 stereo, 960 samples a frame
OPUS_SAMPLES = round(OPUS_RATE * FRAME_SECS)
OPUS_MONO_BYTES = OPUS_SAMPLES * 2

TRIM_WINDOW = 100
"""Frames (2 s) over which a :class:`PcmTrack` watches how much audio waits in its queue."""

QUIET = 300
"""A frame whose samples all stay below this (about -40 dBFS) may be trimmed."""


PcmTrack: type  # made by __getattr__ on first use


def __getattr__(name: str) -> object:
    if name == "PcmTrack":
        track = globals()["PcmTrack"] = _pcm_track_class()
        return track
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pcm_track_class() -> type:
    """Define :class:`PcmTrack`, now that aiortc is wanted."""
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class PcmTrack(MediaStreamTrack):
        """An outgoing audio track playing PCM16 mono bytes put into it.

        ``max_queued``: seconds of audio held at most (None: no limit); past it the oldest
        frames are dropped (counted in ``dropped``), as a producer that runs ahead of real time
        must not grow the queue for ever. ``on_mark(name)`` is called once the audio queued
        before :meth:`mark` has been played, or dropped by :meth:`clear`.

        A stream fed at real time (an echo, a speech-to-speech model) would otherwise keep
        every delay it picks up: a gap in the input plays as silence, and the burst after it
        stays queued. So the track trims surplus delay: when a frame has always been waiting
        behind the one due for a whole :data:`TRIM_WINDOW`, it skips that many quiet frames
        (counted in ``trimmed``). ``trim=False`` for a track fed ahead of time (a file).
        """

        kind = "audio"

        def __init__(
            self,
            sample_rate: int = 16000,
            *,
            max_queued: float | None = 2.0,
            trim: bool = True,
            on_mark: Callable[[str], None] | None = None,
        ) -> None:
            super().__init__()
            self.sample_rate = sample_rate
            self.frame_samples = round(sample_rate * FRAME_SECS)
            self._silence = bytes(2 * self.frame_samples)
            self._queue: deque[bytes | str] = deque()  # 20 ms frames, and marks' names (str)
            self._queued_frames = 0
            self._partial = bytearray()  # put() bytes short of a whole frame
            self._max_frames = (
                None if max_queued is None else max(1, round(max_queued / FRAME_SECS))
            )
            self._on_mark = on_mark
            self._trim = trim
            self._start: float | None = None
            self._timestamp = 0
            # To 48 kHz here, cut into frames after padding the first (see the module docs).
            self._to_opus = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
            self._opus_carry = bytearray()
            self._lowest = 1 << 30  # the fewest frames queued when one was due, this window
            self._watched = 0  # frames due so far this window
            self._excess = 0  # frames of delay to trim
            self.dropped = 0
            self.trimmed = 0

        @property
        def queued(self) -> float:
            """Seconds of audio waiting to be played."""
            return self._queued_frames * FRAME_SECS

        def put(self, pcm: bytes) -> None:
            """Queue PCM16 mono samples (any length) to play after what is queued already."""
            partial = self._partial
            partial += pcm
            size = len(self._silence)
            while len(partial) >= size:
                self._queue.append(bytes(partial[:size]))
                del partial[:size]
                self._queued_frames += 1
            while self._max_frames is not None and self._queued_frames > self._max_frames:
                self._pop_frame()
                self.dropped += 1

        def mark(self, name: str) -> None:
            """Report ``name`` to ``on_mark`` once the audio queued so far has been played."""
            if self._queue:  # audio, or marks still to report after the last frame played
                self._queue.append(name)
            else:
                self._played(name)

        def clear(self) -> None:
            """Drop the audio not played yet; marks waiting for it are reported now."""
            self._partial.clear()
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, str):
                    self._played(item)
            self._queued_frames = 0
            self._excess = 0

        async def next_pcm(self) -> bytes:
            """The next 20 ms of PCM16 (silence if none is queued), when it is due."""
            if self._start is None:
                self._start = time.monotonic()
            else:
                self._timestamp += self.frame_samples
                wait = self._start + self._timestamp / self.sample_rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._watch_depth()
            frame = self._pop_frame()
            while self._excess and frame is not None and self._queued_frames and _quiet(frame):
                self._excess -= 1
                self.trimmed += 1
                frame = self._pop_frame()
            return frame or self._silence

        def _watch_depth(self) -> None:
            """Every :data:`TRIM_WINDOW` frames: if a frame always waited behind the one played,
            that many frames of delay are surplus (left by a gap that played silence, then the
            burst after it), to be trimmed from quiet audio."""
            self._lowest = min(self._lowest, self._queued_frames)
            self._watched += 1
            if self._watched == TRIM_WINDOW and self._trim:
                self._excess = max(0, self._lowest - 1)
                self._lowest, self._watched = self._queued_frames, 0

        async def recv(self) -> av.AudioFrame:
            """The next 20 ms frame for the Opus encoder, when it is due (aiortc's sender
            calls this in a loop)."""
            if self.readyState != "live":
                raise MediaStreamError
            pcm = await self.next_pcm()
            frame = av.AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
            frame.planes[0].update(pcm)
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self._timestamp
            carry = self._opus_carry
            for out in self._to_opus.resample(frame):
                carry += bytes(out.planes[0])[: 2 * out.samples]
            if len(carry) < OPUS_MONO_BYTES:  # the resampler's delay, on the first frame
                carry[:0] = bytes(OPUS_MONO_BYTES - len(carry))
            # Both channels the same: PyAV's own upmix would lower the level by 3 dB.
            mono = np.frombuffer(bytes(carry[:OPUS_MONO_BYTES]), np.int16)
            out = av.AudioFrame(format="s16", layout="stereo", samples=OPUS_SAMPLES)
            out.planes[0].update(np.repeat(mono, 2).tobytes())
            del carry[:OPUS_MONO_BYTES]
            out.sample_rate = OPUS_RATE
            out.time_base = Fraction(1, OPUS_RATE)
            out.pts = self._timestamp * OPUS_RATE // self.sample_rate
            return out

        def _pop_frame(self) -> bytes | None:
            """The oldest queued frame (None if none), reporting the marks before it."""
            queue = self._queue
            while queue:
                item = queue.popleft()
                if isinstance(item, str):
                    self._played(item)
                    continue
                self._queued_frames -= 1
                return item
            return None

        def _played(self, name: str) -> None:
            if self._on_mark is not None:
                self._on_mark(name)

    return PcmTrack


async def pcm_frames(track: MediaStreamTrack, sample_rate: int = 16000) -> AsyncIterator[bytes]:
    """The audio of a received ``track`` as PCM16 mono at ``sample_rate``, a frame for each
    20 ms frame received, until the track ends. The first is short by the resampler's
    delay (about 1 ms): asking the resampler for whole frames would cost 20 ms."""
    import av
    from aiortc.mediastreams import MediaStreamError

    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            yield bytes(out.planes[0])[: 2 * out.samples]


def _quiet(frame: bytes) -> bool:
    return int(np.abs(np.frombuffer(frame, np.int16).astype(np.int32)).max()) < QUIET
