"""What an RTP session needs of its audio codec, the same for G.711 and Opus.

An :class:`RtpCodec` turns RTP payloads into the audio the call's
:class:`~flowcat_ft.transports.call_edge.CallEdge` takes (its ``wire_codec`` at its
``wire_rate``) and 20 ms of that audio back into a payload, and says how far a 20 ms
packet moves the RTP clock:

- :class:`G711` payloads are the wire audio itself (the loop's
  :class:`~flowcat_ft.transports.edge.LoopEdge` decodes them, batched with the other
  calls'), 8 kHz, 160 samples a packet; the jitter buffer conceals losses.
- :class:`Opus` (RFC 7587) payloads are decoded here to PCM16 at the pipeline's rate
  (the decoder resamples from 48 kHz) and the agent's PCM16 is encoded here; the RTP
  clock runs at 48 kHz whatever the audio's bandwidth, 960 a packet. Packets vary in
  size, so the jitter buffer keeps them opaque and gives an empty payload for a lost
  one, which decodes to silence (PyAV's decoder offers no packet-loss concealment).
  Silence while the agent is quiet is encoded silence: the encoder's own for the first
  few packets after the agent's audio (its state follows the audio down to silence),
  then the same packet again, which the encoder would make anyway (libopus takes longer
  over digital silence, about 0.2 ms a packet, than over speech).

Threading: a codec holds one call's encoder and decoder state; it is used only on the
call's media loop.
"""

from __future__ import annotations

import av
import numpy as np

from flowcat_ft.audio.opus import OPUS_RATES, OpusDecoder, OpusEncoder
from flowcat_ft.sip.sdp import Codec

__all__ = ["G711", "Opus", "RtpCodec", "opus_packet_ms", "rtp_codec"]

FRAME_MS = 20
_ENCODED_QUIET = 3  # silent packets encoded after audio before the steady one is reused


class RtpCodec:
    """One call's codec on the wire (see the module docstring)."""

    clock_rate: int
    """The RTP timestamp's units per second."""
    wire_codec: str
    """The codec of the audio :meth:`decode` gives and :meth:`encode` takes."""
    wire_rate: int
    """The sample rate of that audio."""
    jitter_codec: str | None
    """The jitter buffer's ``codec`` for these payloads (None: opaque payloads)."""

    @property
    def samples_per_frame(self) -> int:
        """RTP timestamp units in a 20 ms packet."""
        return self.clock_rate * FRAME_MS // 1000

    def decode(self, payload: bytes) -> bytes:
        """The wire audio of one payload (an empty one: a lost packet's); ValueError
        for a payload that is not one of the codec's."""
        raise NotImplementedError

    def encode(self, audio: bytes) -> bytes:
        """The payload of 20 ms of wire audio."""
        raise NotImplementedError

    def silence(self) -> bytes:
        """The payload of 20 ms of silence."""
        raise NotImplementedError

    def packet_ms(self, payload: bytes) -> int | None:
        """The audio in one packet, in ms (None: cannot tell)."""
        raise NotImplementedError


class G711(RtpCodec):
    """µ-law or A-law: payloads are wire audio, one byte a sample."""

    clock_rate = wire_rate = 8000

    def __init__(self, wire_codec: str) -> None:
        self.wire_codec = self.jitter_codec = wire_codec
        self._silence = (b"\xff" if wire_codec == "mulaw" else b"\xd5") * self.samples_per_frame

    def decode(self, payload: bytes) -> bytes:
        return payload

    def encode(self, audio: bytes) -> bytes:
        return audio

    def silence(self) -> bytes:
        return self._silence

    def packet_ms(self, payload: bytes) -> int | None:
        size = len(payload)
        return size // 8 if size and size % 80 == 0 else None


class Opus(RtpCodec):
    """Opus at 48 kHz on the wire, PCM16 at ``sample_rate`` (one of
    :data:`~flowcat_ft.audio.opus.OPUS_RATES`) to and from the pipeline."""

    clock_rate = 48000
    wire_codec = "pcm16"
    jitter_codec = None

    def __init__(self, sample_rate: int) -> None:
        self.wire_rate = sample_rate
        self._encoder = OpusEncoder(sample_rate)
        self._decoder = OpusDecoder(sample_rate)
        self._pcm = np.empty(sample_rate * 120 // 1000, np.int16)  # Opus's longest packet
        self._quiet = np.zeros(sample_rate * FRAME_MS // 1000, np.int16)
        for _ in range(_ENCODED_QUIET):
            self._silence = self._encoder.encode(self._quiet)
        self._quiet_packets = _ENCODED_QUIET  # silent packets since the last audio

    def decode(self, payload: bytes) -> bytes:
        if not payload:
            return self._quiet.tobytes()
        try:
            n = self._decoder.decode(payload, self._pcm)
        except av.FFmpegError:
            raise ValueError(f"not an Opus packet ({len(payload)} bytes)") from None
        return self._pcm[:n].tobytes()

    def encode(self, audio: bytes) -> bytes:
        self._quiet_packets = 0
        return self._encoder.encode(np.frombuffer(audio, np.int16))

    def silence(self) -> bytes:
        if self._quiet_packets >= _ENCODED_QUIET:
            return self._silence
        self._quiet_packets += 1
        return self._encoder.encode(self._quiet)

    def packet_ms(self, payload: bytes) -> int | None:
        return opus_packet_ms(payload)


def rtp_codec(codec: Codec, pipeline_rate: int) -> RtpCodec:
    """The :class:`RtpCodec` for a negotiated ``codec``, on a call whose pipeline runs at
    ``pipeline_rate`` (Opus decodes straight to it where Opus can, else to 48 kHz)."""
    if codec.wire_codec == "opus":
        return Opus(pipeline_rate if pipeline_rate in OPUS_RATES else 48000)
    return G711(codec.wire_codec)


# The frame durations of RFC 6716 section 3.1's 32 configurations, in tenths of a ms:
# SILK 10/20/40/60 ms (0-11), hybrid 10/20 ms (12-15), CELT 2.5/5/10/20 ms (16-31).
_FRAME_TENTHS = [100, 200, 400, 600] * 3 + [100, 200] * 2 + [25, 50, 100, 200] * 4


def opus_packet_ms(payload: bytes) -> int | None:
    """The audio in an Opus packet, in whole ms, from its TOC byte (RFC 6716 section
    3.1); None for a packet too short to say."""
    if not payload:
        return None
    toc = payload[0]
    frames = (1, 2, 2, 0)[toc & 3]
    if not frames:
        if len(payload) < 2:
            return None
        frames = payload[1] & 0x3F
    return _FRAME_TENTHS[toc >> 3] * frames // 10
