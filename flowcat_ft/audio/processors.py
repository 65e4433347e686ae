"""Processors around the audio kernels: G.711 decoding and encoding, and resampling.

Each one writes its output with a kernel's ``out`` argument straight into a slab taken
from the runtime's pool, makes a frame of the same class on it (an
:class:`~flowcat_ft.frames.InputAudioRawFrame` stays one), and gives the input frame's
slab straight back: no sample buffer is allocated per frame (numpy's own scratch inside
the kernels aside: an index or cast buffer per call, about 1-2 KB).  Each acts on the audio
frames of one class travelling downstream (*frame_type*: by default what the caller sends
for the decoder and the resampler, what goes to the caller for the encoder) and passes
every other frame on untouched, so a pipeline can decode the caller's audio at its head
and encode the bot's at its tail.

The G.711 processors also have batch kernels (see
:meth:`~flowcat_ft.processor.FrameProcessor.process_batch`): every call's frames on a stage
are coded with one gather from the slab arena, one table lookup and one scatter back into
the same slabs (decoded samples fill the bytes the codes came from), so a batch costs a few
numpy calls, however many calls it holds::

    Pipeline([
        G711Decoder, lambda: Resampler(16000), ...,  # the caller's audio
        lambda: Resampler(8000, OutputAudioRawFrame), G711Encoder,  # the bot's
    ])
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flowcat_ft.audio.g711 import DECODERS, ENCODERS
from flowcat_ft.audio.resample import StreamingResampler
from flowcat_ft.frames import (
    AudioRawFrame,
    Direction,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
)
from flowcat_ft.processor import Batch, FrameProcessor
from flowcat_ft.slabs import Slab, SlabPool

__all__ = ["G711Decoder", "G711Encoder", "Resampler"]

Kernel = Callable[[np.ndarray, np.ndarray], int]


def _take(pool: SlabPool, nbytes: int) -> Slab:
    """Take a slab for *nbytes* of output, refusing (before taking one) what cannot fit."""
    if nbytes > pool.slab_bytes:
        raise ValueError(f"{nbytes} bytes of audio do not fit a {pool.slab_bytes}-byte slab")
    return pool.take()


def _code_in_place(
    frames: list[AudioRawFrame], pool: SlabPool, kernels: dict[str, Kernel], decoding: bool
) -> None:
    """Decode (or encode) ``frames`` in their own slabs: per codec and length, gather the
    rows, run the kernel once over them, scatter the result back."""
    groups: dict[tuple[str, int], list[AudioRawFrame]] = {}
    for frame in frames:
        key = (frame.codec, frame.num_frames * frame.num_channels)
        groups.setdefault(key, []).append(frame)
    for (codec, n), group in groups.items():
        if 2 * n > pool.slab_bytes:
            raise ValueError(f"{2 * n} bytes of audio do not fit a {pool.slab_bytes}-byte slab")
        rows = [frame.slab.index for frame in group]
        if decoding:
            out = np.empty((len(rows), n), np.int16)
            kernels[codec](pool.u8[rows, :n], out)
            pool.pcm[rows, :n] = out
        else:
            out = np.empty((len(rows), n), np.uint8)
            kernels[codec](pool.pcm[rows, :n], out)
            pool.u8[rows, :n] = out


def _replace(
    frame: AudioRawFrame, slab: Slab, num_frames: int, sample_rate: int, codec: str
) -> AudioRawFrame:
    """Give *frame*'s slab back and return a frame of its class, channels and time on *slab*."""
    frame.take_slab().release()
    return type(frame)(slab, num_frames, sample_rate, frame.num_channels, codec, pts=frame.pts)


class G711Decoder(FrameProcessor):
    """Decode µ-law and A-law audio frames of *frame_type* into pcm16 frames."""

    def __init__(self, frame_type: type[AudioRawFrame] = InputAudioRawFrame) -> None:
        super().__init__()
        self.frame_type = frame_type

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM and isinstance(frame, self.frame_type):
            decode = DECODERS.get(frame.codec)
            if decode is not None:
                codes = frame.samples
                slab = _take(self.pool, 2 * len(codes))
                decode(codes, slab.pcm)
                frame = _replace(frame, slab, frame.num_frames, frame.sample_rate, "pcm16")
        self.push(frame, direction)

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        frames = batch.frames
        if batch.direction is Direction.DOWNSTREAM:
            coded = [
                frame
                for frame, proc in zip(frames, batch.processors(), strict=True)
                if isinstance(frame, proc.frame_type) and frame.codec in DECODERS
            ]
            if coded:
                _code_in_place(coded, batch.pool, DECODERS, decoding=True)
                for frame in coded:
                    frame.codec = "pcm16"
        batch.push(frames)


class G711Encoder(FrameProcessor):
    """Encode pcm16 audio frames of *frame_type* with *codec* (``"mulaw"`` or ``"alaw"``)."""

    def __init__(
        self, codec: str = "mulaw", frame_type: type[AudioRawFrame] = OutputAudioRawFrame
    ) -> None:
        super().__init__()
        if codec not in ENCODERS:
            raise ValueError(f"unknown G.711 codec {codec!r}; expected one of {tuple(ENCODERS)}")
        self.codec = codec
        self.frame_type = frame_type
        self._encode = ENCODERS[codec]

    def process(self, frame: Frame, direction: Direction) -> None:
        if (
            direction is Direction.DOWNSTREAM
            and isinstance(frame, self.frame_type)
            and frame.codec == "pcm16"
        ):
            samples = frame.samples
            slab = _take(self.pool, len(samples))
            self._encode(samples, slab.u8)
            frame = _replace(frame, slab, frame.num_frames, frame.sample_rate, self.codec)
        self.push(frame, direction)

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        frames = batch.frames
        if batch.direction is Direction.DOWNSTREAM:
            by_codec: dict[str, list[AudioRawFrame]] = {}
            for frame, proc in zip(frames, batch.processors(), strict=True):
                if isinstance(frame, proc.frame_type) and frame.codec == "pcm16":
                    by_codec.setdefault(proc.codec, []).append(frame)
            for codec, coded in by_codec.items():
                encoders = {"pcm16": ENCODERS[codec]}
                _code_in_place(coded, batch.pool, encoders, decoding=False)
                for frame in coded:
                    frame.codec = codec
        batch.push(frames)


class Resampler(FrameProcessor):
    """Resample mono pcm16 audio frames of *frame_type* to *out_rate*.

    The call's :class:`~flowcat_ft.audio.resample.StreamingResampler` is made on the first
    frame, at that frame's rate, and carries the stream from frame to frame; a frame at
    another rate starts a new stream at its rate, and a frame already at *out_rate* passes
    as it is (and ends the stream).  An interruption ends it too: the audio after it does
    not continue the audio it dropped.  The output lags the input by the resampler's
    filter delay (:attr:`StreamingResampler.delay_samples`, about 1 ms).
    """

    def __init__(self, out_rate: int, frame_type: type[AudioRawFrame] = InputAudioRawFrame) -> None:
        super().__init__()
        if out_rate <= 0:
            raise ValueError(f"out_rate must be positive, not {out_rate}")
        self.out_rate = out_rate
        self.frame_type = frame_type
        self._resampler: StreamingResampler | None = None

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is not Direction.DOWNSTREAM or not isinstance(frame, self.frame_type):
            self.push(frame, direction)
            return
        if frame.sample_rate == self.out_rate:
            self._resampler = None
            self.push(frame, direction)
            return
        if frame.codec != "pcm16" or frame.num_channels != 1:
            raise ValueError(f"Resampler takes mono pcm16 audio, not {frame!r}")
        resampler = self._resampler
        if resampler is None or resampler.in_rate != frame.sample_rate:
            resampler = self._resampler = StreamingResampler(frame.sample_rate, self.out_rate)
        count = resampler.out_samples(frame.num_frames)
        slab = _take(self.pool, 2 * count)
        resampler.process(frame.samples, slab.pcm)
        self.push(_replace(frame, slab, count, self.out_rate, "pcm16"), direction)

    def on_interruption(self) -> None:
        if self._resampler is not None:
            self._resampler.reset()
