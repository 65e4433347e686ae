"""Opus encoding and decoding of 20 ms frames of mono int16 PCM, through PyAV's libopus.

PyAV (``av``) keeps the GIL off on 3.13t.  Each :class:`OpusEncoder` and
:class:`OpusDecoder` holds one stream's codec state::

    encoder, decoder = OpusEncoder(16000), OpusDecoder(16000)
    packet = encoder.encode(frame)  # 320 samples in, one packet out
    n = decoder.decode(packet, out)  # 320 samples back into out

The decoder always decodes at 48 kHz (FFmpeg's libopus decoder does) and converts to its
*sample_rate* with a :class:`~flowcat_ft.audio.resample.StreamingResampler`.  Opus delays
the audio by its look-ahead (6.5 ms), plus the resampler's filter delay when one is used.

Threading: an instance holds one stream's state and is not locked; use it from one thread
at a time.
"""

from __future__ import annotations

import av
import numpy as np

from flowcat_ft.audio.resample import StreamingResampler

__all__ = ["OPUS_RATES", "OpusDecoder", "OpusEncoder"]

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
"""The sample rates Opus encodes."""

_DECODE_RATE = 48000


def _check_rate(sample_rate: int) -> None:
    if sample_rate not in OPUS_RATES:
        raise ValueError(f"Opus takes {OPUS_RATES} Hz, not {sample_rate}")


class OpusEncoder:
    """Encode 20 ms frames of mono int16 samples at *sample_rate* into Opus packets."""

    def __init__(self, sample_rate: int = 48000, bitrate: int = 32000) -> None:
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate // 50
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = sample_rate
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.open()
        self._codec = codec
        self._pts = 0

    def encode(self, pcm: np.ndarray) -> bytes:
        """Encode one frame of ``frame_samples`` int16 samples; return its packet."""
        if pcm.dtype != np.int16 or pcm.shape != (self.frame_samples,):
            raise ValueError(f"expected {self.frame_samples} int16 samples, got {pcm.shape}")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += self.frame_samples
        (packet,) = self._codec.encode(frame)  # libopus gives one packet per 20 ms frame
        return bytes(packet)


class OpusDecoder:
    """Decode Opus packets into mono int16 samples at *sample_rate*."""

    def __init__(self, sample_rate: int = 48000) -> None:
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        codec = av.CodecContext.create("libopus", "r")
        codec.sample_rate = _DECODE_RATE
        codec.layout = "mono"
        codec.format = "s16"
        codec.open()
        self._codec = codec
        self._resampler = (
            StreamingResampler(_DECODE_RATE, sample_rate) if sample_rate != _DECODE_RATE else None
        )

    def decode(self, packet: bytes, out: np.ndarray) -> int:
        """Decode *packet* into the start of the int16 array *out*; return the samples written.

        *out* must hold the packet's audio at *sample_rate*: 20 ms for the packets of an
        :class:`OpusEncoder` (Opus packets may hold up to 120 ms).
        """
        written = 0
        for frame in self._codec.decode(av.Packet(packet)):
            pcm = frame.to_ndarray().reshape(-1)
            if self._resampler is None:
                if len(pcm) > len(out) - written:
                    raise ValueError(f"out holds {len(out)} samples, more needed")
                out[written : written + len(pcm)] = pcm
                written += len(pcm)
            else:
                written += self._resampler.process(pcm, out[written:])
        return written
