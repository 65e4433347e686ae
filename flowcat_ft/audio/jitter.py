"""An adaptive jitter buffer for RTP audio, Sans-I/O: packets in, one frame per tick out.

A transport calls :meth:`JitterBuffer.put` for every RTP packet as it arrives and
:meth:`JitterBuffer.get` every ``frame_ms`` from its playout clock; the buffer never reads
a clock or a socket itself, so simulated traces test it exactly.

- Packets are played in order of their 16-bit sequence numbers, extended across the
  wraparound at 65536.
- The target depth (how much audio waits ahead of playout) follows the interarrival
  jitter J of RFC 3550 (section 6.4.1, estimated as in its appendix A.8): one frame plus
  three times J, rounded up to whole frames and kept within ``min_depth_ms`` and
  ``max_depth_ms``.  The depth grows when a packet is not there in time (playout waits
  for it, concealing a frame) and shrinks, one packet dropped at a time, when more than a
  frame of extra audio waits.
- A packet that arrives after its turn to play has passed is late, one already received
  is a duplicate: both are dropped and counted.
- A missing packet is concealed: the last frame played again, 6 dB quieter each time, for
  up to :data:`CONCEAL_REPEATS` frames, then silence.  Payloads of a codec the buffer
  cannot decode (Opus: ``codec=None``) are opaque: a missing one is an empty payload,
  for the decoder to conceal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from flowcat_ft.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

__all__ = ["CONCEAL_REPEATS", "JitterBuffer", "JitterStats", "Playout"]

CONCEAL_REPEATS = 2
"""Frames concealed by repeating the last one, attenuated, before silence."""

_JITTER_GAIN = 1 / 16  # RFC 3550's smoothing of the jitter estimate
_JITTER_MULTIPLE = 3.0  # target depth: one frame plus this many times the jitter
_SEEN_WINDOW = 1024  # sequence numbers remembered to tell duplicates from late packets


class Playout(NamedTuple):
    """What :meth:`JitterBuffer.get` gives for one tick."""

    payload: bytes
    seq: int | None
    """The played packet's 16-bit sequence number; None for concealment or silence."""


@dataclass(frozen=True, slots=True)
class JitterStats:
    """Counts since the buffer was made, and its state now.

    ``received`` counts distinct packets (late ones included), ``lost`` the packets never
    received (RFC 3550's cumulative loss: expected less received), ``concealed`` the
    frames played without their packet, ``dropped`` the packets dropped to shrink the
    depth.
    """

    received: int
    lost: int
    late: int
    duplicate: int
    concealed: int
    dropped: int
    depth_ms: float
    target_ms: float
    jitter_ms: float


Kernel = Callable[[np.ndarray, np.ndarray], int]


class _Codec(NamedTuple):
    decode: Kernel | None  # None for pcm16
    encode: Kernel | None


_CODECS = {
    "pcm16": _Codec(None, None),
    "mulaw": _Codec(ulaw_decode, ulaw_encode),
    "alaw": _Codec(alaw_decode, alaw_encode),
}


class JitterBuffer:
    """Reorder and time one RTP audio stream for playout.

    *sample_rate* is the RTP clock rate (8000 for G.711), *frame_ms* the audio in each
    packet, *codec* the payloads' encoding (``"pcm16"``, ``"mulaw"`` or ``"alaw"``), used
    to make concealment and silence (None: opaque payloads, and ``b""`` in place of a
    missing one).  Times given to :meth:`put` and :meth:`get` are in
    seconds, from any one clock.

    Threading: not locked; a transport uses one buffer from one thread.
    """

    def __init__(
        self,
        sample_rate: int,
        frame_ms: int = 20,
        min_depth_ms: int = 20,
        max_depth_ms: int = 80,
        codec: str | None = "pcm16",
    ) -> None:
        if codec is not None and codec not in _CODECS:
            raise ValueError(f"unknown codec {codec!r}; expected one of {tuple(_CODECS)}")
        if not 0 < frame_ms <= min_depth_ms <= max_depth_ms:
            raise ValueError("need 0 < frame_ms <= min_depth_ms <= max_depth_ms")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.min_depth_ms = min_depth_ms
        self.max_depth_ms = max_depth_ms
        self._codec = _CODECS[codec] if codec is not None else None
        samples = sample_rate * frame_ms // 1000
        self._silence = self._encode(np.zeros(samples, np.int16)) if self._codec else b""

        self._packets: dict[int, bytes] = {}  # by extended sequence number
        self._seen: set[int] = set()  # extended numbers received lately
        self._highest: int | None = None  # highest extended number received
        self._lowest = 0  # lowest extended number received
        self._first_arrival = 0.0
        self._next: int | None = None  # the packet to play next; None before playout
        self._last_payload: bytes | None = None
        self._repeats = 0  # frames concealed in a row
        self._waits = 0  # ticks concealed waiting for the next packet, since one played
        self._transit: float | None = None
        self._jitter = 0.0  # seconds
        self._received = self._late = self._duplicate = 0
        self._concealed = self._dropped = 0

    # -- packets in --------------------------------------------------------------------------

    def put(self, seq: int, timestamp: int, payload: bytes, arrival_time: float) -> None:
        """Take an RTP packet: 16-bit sequence number, RTP timestamp, payload, arrival time."""
        if self._highest is None:
            ext = seq
            self._highest = self._lowest = ext
            self._first_arrival = arrival_time
        else:
            delta = (seq - self._highest) & 0xFFFF
            ext = self._highest + (delta - 0x10000 if delta >= 0x8000 else delta)
        if ext in self._seen:
            self._duplicate += 1
            return
        self._remember(ext)
        self._received += 1
        self._highest = max(self._highest, ext)
        self._lowest = min(self._lowest, ext)
        self._track_jitter(timestamp, arrival_time)
        if self._next is not None and ext < self._next:
            self._late += 1
            return
        self._packets[ext] = payload

    def _remember(self, ext: int) -> None:
        seen = self._seen
        seen.add(ext)
        if len(seen) > 2 * _SEEN_WINDOW:
            oldest = self._highest - _SEEN_WINDOW
            self._seen = {n for n in seen if n > oldest}

    def _track_jitter(self, timestamp: int, arrival_time: float) -> None:
        """RFC 3550 A.8: J += (|D| - J) / 16, D the change in transit time."""
        transit = arrival_time - timestamp / self.sample_rate
        if self._transit is not None:
            self._jitter += (abs(transit - self._transit) - self._jitter) * _JITTER_GAIN
        self._transit = transit

    # -- frames out --------------------------------------------------------------------------

    def get(self, now: float) -> Playout:
        """Give the audio for the next ``frame_ms`` tick of the playout clock at *now*."""
        packets = self._packets
        target = self.target_ms / self.frame_ms  # in frames
        if self._next is None:
            if not packets:
                return Playout(self._silence, None)
            first = min(packets)
            span = self._highest - first + 1
            if span < target and now < self._first_arrival + self.target_ms / 1000:
                return Playout(self._silence, None)
            self._next = first
        next_seq = self._next
        while next_seq not in packets:
            earliest = min(packets) if packets else None
            if earliest is None or self._highest - next_seq + 1 < target:
                self._waits += 1  # it may still come: conceal this tick and wait for it
                return self._conceal()
            if earliest - next_seq > self.max_depth_ms // self.frame_ms:
                next_seq = earliest  # a jump in the sequence: go on from there
                break
            # Lost, or too late to wait for: it gets a concealed frame, unless one of the
            # ticks spent waiting for it gave it one already.
            self._next = next_seq = next_seq + 1
            if not self._waits:
                return self._conceal()
            self._waits -= 1
        if self._highest - next_seq > target and next_seq + 1 in packets:
            del packets[next_seq]  # more than a frame too deep: drop one to catch up
            self._dropped += 1
            next_seq += 1
        self._next = next_seq + 1
        self._waits = 0
        payload = packets.pop(next_seq)
        self._last_payload = payload
        self._repeats = 0
        return Playout(payload, next_seq & 0xFFFF)

    def _conceal(self) -> Playout:
        self._concealed += 1
        self._repeats += 1
        last = self._last_payload
        codec = self._codec
        if last is None or self._repeats > CONCEAL_REPEATS or codec is None:
            return Playout(self._silence, None)
        if codec.decode is None:
            pcm = np.frombuffer(last, np.int16)
        else:
            pcm = np.empty(len(last), np.int16)
            codec.decode(np.frombuffer(last, np.uint8), pcm)
        quieter = (pcm >> self._repeats).astype(np.int16)  # 6 dB per repeat
        return Playout(self._encode(quieter), None)

    def _encode(self, pcm: np.ndarray) -> bytes:
        codec = self._codec
        if codec.encode is None:
            return pcm.tobytes()
        out = np.empty(len(pcm), np.uint8)
        codec.encode(pcm, out)
        return out.tobytes()

    # -- state -------------------------------------------------------------------------------

    @property
    def jitter_ms(self) -> float:
        """The interarrival jitter estimate (RFC 3550), in milliseconds."""
        return self._jitter * 1000

    @property
    def target_ms(self) -> float:
        """The depth the buffer aims for now, from the jitter."""
        wanted = self.frame_ms + _JITTER_MULTIPLE * self.jitter_ms
        wanted = math.ceil(wanted / self.frame_ms - 1e-9) * self.frame_ms
        return float(min(max(wanted, self.min_depth_ms), self.max_depth_ms))

    @property
    def depth_ms(self) -> float:
        """The audio buffered ahead of playout: from the next packet to the newest."""
        if self._highest is None:
            return 0.0
        start = self._next if self._next is not None else self._lowest
        return float(max(0, self._highest - start + 1) * self.frame_ms)

    def stats(self) -> JitterStats:
        """The counts so far and the state now."""
        expected = 0 if self._highest is None else self._highest - self._lowest + 1
        return JitterStats(
            received=self._received,
            lost=max(0, expected - self._received),
            late=self._late,
            duplicate=self._duplicate,
            concealed=self._concealed,
            dropped=self._dropped,
            depth_ms=self.depth_ms,
            target_ms=self.target_ms,
            jitter_ms=self.jitter_ms,
        )
