"""Frames: what flows through a pipeline.

Three kinds, as in pipecat:

- :class:`SystemFrame` is handled at once: it overtakes the same call's queued data frames
  (start, cancel, interruption, the output's pause and resume, the VAD's own speaking
  events, error);
- :class:`DataFrame` carries content in order (audio, text, transcriptions); an
  interruption drops the queued ones that are output (the caller's own audio and words stay);
- :class:`ControlFrame` is ordered with data but survives interruptions (speaking events,
  TTS boundaries, and :class:`EndFrame`, which ends a call after what was queued before it).

Audio frames reference a preallocated :class:`~flowcat_ft.slabs.Slab` rather than owning
bytes; the slab goes back to its pool when the frame is freed.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from flowcat_ft.slabs import Slab, SlabPool


class Direction(enum.IntEnum):
    """Which way a frame travels: towards the output, or back towards the input."""

    DOWNSTREAM = 0
    UPSTREAM = 1


class Frame:
    """Base of every frame.

    ``pts`` is a presentation timestamp in nanoseconds (``time.monotonic_ns`` by default).
    ``_call`` and ``_epoch`` are routing fields written by the runtime as the frame moves
    between stage threads: the route of the call the frame belongs to (a
    :class:`~flowcat_ft.stage.Route`) and the interruption epoch it was sent in. Only the
    thread that currently holds the frame touches them; the ring that hands the frame over
    orders those writes before the next thread's reads.
    """

    __slots__ = ("_call", "_epoch", "pts")

    def __init__(self, pts: int | None = None) -> None:
        self.pts = time.monotonic_ns() if pts is None else pts
        self._call = None
        self._epoch = 0

    @property
    def name(self) -> str:
        return type(self).__name__

    def release(self) -> None:
        """Give back the pooled memory the frame holds, now (most frames hold none; see
        :meth:`AudioRawFrame.release`)."""

    def __repr__(self) -> str:
        return f"{self.name}(pts={self.pts})"


class SystemFrame(Frame):
    """Handled out of band: overtakes queued data frames of the same call."""

    __slots__ = ()


class DataFrame(Frame):
    """Content, processed in order; an interruption drops the queued ones, except what the
    caller said (``interruptible = False``: input audio, transcriptions)."""

    __slots__ = ()

    interruptible = True


class ControlFrame(Frame):
    """Ordered with data frames, but not dropped by an interruption."""

    __slots__ = ()


# -- system frames -------------------------------------------------------------------------


class StartFrame(SystemFrame):
    """The first frame of every call; processors read the call's audio settings from it."""

    __slots__ = ("audio_in_sample_rate", "audio_out_sample_rate", "metadata")

    def __init__(
        self,
        audio_in_sample_rate: int = 16000,
        audio_out_sample_rate: int = 16000,
        metadata: dict | None = None,
    ) -> None:
        super().__init__()
        self.audio_in_sample_rate = audio_in_sample_rate
        self.audio_out_sample_rate = audio_out_sample_rate
        self.metadata = metadata or {}


class CancelFrame(SystemFrame):
    """Ends a call at once: queued frames are dropped, processors' ``on_cancel`` run."""

    __slots__ = ("reason",)

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__()
        self.reason = reason


class InterruptionFrame(SystemFrame):
    """The user barged in: every stage drops the call's queued downstream data frames.

    ``entered_ns`` is when the interruption entered the pipeline, to measure how long it
    takes to sweep every stage.
    """

    __slots__ = ("entered_ns",)

    def __init__(self) -> None:
        super().__init__()
        self.entered_ns = time.perf_counter_ns()


class PauseOutputFrame(SystemFrame):
    """The caller may be cutting in: the output stops playing the bot's audio at once
    (a carrier is told to drop what it holds) and keeps it, with what follows, until a
    :class:`ResumeOutputFrame` plays it on from where the caller stopped hearing it, or
    an :class:`InterruptionFrame` drops it. LiveKit Agents' "false interruption" pause."""

    __slots__ = ()


class ResumeOutputFrame(SystemFrame):
    """The speech that paused the output did not interrupt: play on what was kept."""

    __slots__ = ()


class VADUserStartedSpeakingFrame(SystemFrame):
    """The voice activity analyzer hears the caller speaking, before a turn is confirmed
    (the analyzer's ``start_secs``): enough to pause the bot on, not to take a turn on.
    pipecat's name for the VAD's own event."""

    __slots__ = ()


class VADUserStoppedSpeakingFrame(SystemFrame):
    """The speech a :class:`VADUserStartedSpeakingFrame` reported is over: the analyzer
    is quiet again (having started a turn or not)."""

    __slots__ = ()


class ErrorFrame(SystemFrame):
    """Reports an error upstream. ``fatal`` errors end the call."""

    __slots__ = ("error", "fatal", "processor")

    def __init__(self, error: str, fatal: bool = False, processor: str | None = None) -> None:
        super().__init__()
        self.error = error
        self.fatal = fatal
        self.processor = processor

    def __repr__(self) -> str:
        return f"ErrorFrame({self.error!r}, fatal={self.fatal}, processor={self.processor!r})"


class MetricsFrame(SystemFrame):
    """Measurements from one service: ``data`` maps a metric's name to its value
    (``"ttfb_ms"``, ``"prompt_tokens"``, ``"completion_tokens"``...)."""

    __slots__ = ("data", "processor")

    def __init__(self, processor: str, data: dict[str, Any]) -> None:
        super().__init__()
        self.processor = processor
        self.data = dict(data)

    def __repr__(self) -> str:
        return f"MetricsFrame({self.processor!r}, {self.data!r})"


class InputDTMFFrame(SystemFrame):
    """A key the caller pressed (``0``-``9``, ``*``, ``#``, ``A``-``D``)."""

    __slots__ = ("digit",)

    def __init__(self, digit: str) -> None:
        super().__init__()
        self.digit = digit

    def __repr__(self) -> str:
        return f"InputDTMFFrame({self.digit!r})"


# -- control frames ------------------------------------------------------------------------


class EndFrame(ControlFrame):
    """Ends a call after every frame queued before it has been processed."""

    __slots__ = ()


class UserStartedSpeakingFrame(ControlFrame):
    __slots__ = ()


class UserStoppedSpeakingFrame(ControlFrame):
    __slots__ = ()


class BotStartedSpeakingFrame(ControlFrame):
    __slots__ = ()


class BotStoppedSpeakingFrame(ControlFrame):
    __slots__ = ()


class TTSStartedFrame(ControlFrame):
    __slots__ = ()


class TTSStoppedFrame(ControlFrame):
    __slots__ = ()


class LLMFullResponseStartFrame(ControlFrame):
    __slots__ = ()


class LLMFullResponseEndFrame(ControlFrame):
    __slots__ = ()


# -- data frames ---------------------------------------------------------------------------


class OutputDTMFFrame(DataFrame):
    """A key for the transport to press towards the caller (RFC 4733 on RTP), in order
    with the agent's audio."""

    __slots__ = ("digit",)

    def __init__(self, digit: str) -> None:
        super().__init__()
        self.digit = digit

    def __repr__(self) -> str:
        return f"OutputDTMFFrame({self.digit!r})"


class TextFrame(DataFrame):
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def __repr__(self) -> str:
        return f"{self.name}({self.text!r})"


class LLMTextFrame(TextFrame):
    """A piece of the LLM's streamed reply."""

    __slots__ = ()


class TTSTextFrame(TextFrame):
    """Text the TTS has spoken (or is speaking)."""

    __slots__ = ()


class TranscriptionFrame(TextFrame):
    """A final transcript of the user's speech."""

    __slots__ = ("language", "timestamp", "user_id")

    interruptible = False

    def __init__(
        self, text: str, user_id: str = "", timestamp: str = "", language: str | None = None
    ) -> None:
        super().__init__(text)
        self.user_id = user_id
        self.timestamp = timestamp
        self.language = language


class InterimTranscriptionFrame(TranscriptionFrame):
    """A transcript that may still change."""

    __slots__ = ()


CODECS = ("pcm16", "mulaw", "alaw")
"""Audio encodings a slab may hold: 16-bit signed PCM, or G.711 bytes."""

SAMPLE_RATES = (8000, 16000, 24000, 44100, 48000)
"""The rates audio may arrive at, in Hz: telephone, wideband, and the studio rates."""

MAX_CHANNELS = 2
"""Audio arrives mono or stereo."""


class AudioRawFrame(DataFrame):
    """Audio held in a slab: ``num_frames`` samples per channel, interleaved.

    The slab goes back to its pool when this frame is freed. A numpy view taken from
    :attr:`samples` is valid only while the frame is alive.
    """

    __slots__ = ("codec", "num_channels", "num_frames", "sample_rate", "slab")

    def __init__(
        self,
        slab: Slab,
        num_frames: int,
        sample_rate: int,
        num_channels: int = 1,
        codec: str = "pcm16",
        pts: int | None = None,
    ) -> None:
        super().__init__(pts)
        self.slab = slab
        self.num_frames = num_frames
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.codec = codec

    @classmethod
    def from_bytes(
        cls,
        pool: SlabPool,
        data: bytes | bytearray | memoryview,
        sample_rate: int,
        num_channels: int = 1,
        codec: str = "pcm16",
        wait: float = 0.0,
    ) -> AudioRawFrame:
        """Copy ``data`` into a slab taken from ``pool``: the one copy, at the edge
        (waiting up to ``wait`` seconds for a free slab, see :meth:`SlabPool.take`)."""
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
        width = 2 if codec == "pcm16" else 1
        if len(data) % (width * num_channels):
            raise ValueError(
                f"{len(data)} bytes is not a whole number of {codec} samples "
                f"for {num_channels} channel(s)"
            )
        if len(data) > pool.slab_bytes:
            raise ValueError(f"{len(data)} bytes do not fit a {pool.slab_bytes}-byte slab")
        slab = pool.take(wait)
        slab.write(data)
        return cls(slab, len(data) // (width * num_channels), sample_rate, num_channels, codec)

    @property
    def samples(self) -> np.ndarray:
        """The audio as a numpy view into the slab: int16 for PCM, uint8 for G.711."""
        slab = self.slab
        if slab is None:
            raise ValueError(f"{self!r} has no audio any more: its slab was released or moved")
        n = self.num_frames * self.num_channels
        return slab.pcm[:n] if self.codec == "pcm16" else slab.u8[:n]

    @property
    def audio(self) -> bytes:
        """A copy of the audio bytes (for the edges of the system, not the hot path)."""
        return self.samples.tobytes()

    def take_slab(self) -> Slab:
        """Detach the slab so a new frame can own it (no copy, no return to the pool)."""
        slab, self.slab = self.slab, None
        return slab

    def release(self) -> None:
        """Give the slab back to its pool now, not when the frame is freed: for the owner
        of a frame that is done with its audio (the runtime, for frames it drops; a
        transport, once the audio is on the wire). The frame has no audio afterwards.

        A frame freed on another thread than the one that made it is freed only when
        that thread next runs Python code (3.13t's biased reference counting); releasing
        the slab explicitly brings it back at once, whichever thread frees the frame."""
        slab, self.slab = self.slab, None
        if slab is not None:
            slab.release()

    def __del__(self) -> None:
        slab = self.slab
        if slab is not None:
            slab.release()

    def __repr__(self) -> str:
        return (
            f"{self.name}({self.num_frames} frames, {self.sample_rate} Hz, "
            f"{self.num_channels} ch, {self.codec})"
        )


class InputAudioRawFrame(AudioRawFrame):
    """Audio from the caller (never dropped by an interruption: it is what barged in)."""

    __slots__ = ()

    interruptible = False


class OutputAudioRawFrame(AudioRawFrame):
    """Audio for the caller."""

    __slots__ = ()


class TTSAudioRawFrame(OutputAudioRawFrame):
    """Audio synthesised by a TTS service."""

    __slots__ = ()
