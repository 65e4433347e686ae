"""RTP and RTCP packets (RFC 3550) and RFC 4733 telephone events, Sans-I/O.

- :func:`parse_rtp` / :func:`rtp_packet`: the 12-byte header (CSRCs, a header extension and
  padding are skipped on the way in), payload type, marker, sequence number, timestamp
  and SSRC.
- :class:`DtmfReceiver` turns RFC 4733 event packets into digits, once per event however
  many packets (and retransmitted end packets) carry it; :func:`dtmf_packets` makes the
  payloads that send one.
- :class:`ReceptionStats` keeps what an RTCP receiver report says about a stream;
  :func:`sender_report` / :func:`receiver_report` build compound RTCP packets with an SDES
  CNAME, and :func:`parse_rtcp` reads the sender report's timestamp (for round trips).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "DTMF_EVENTS",
    "DtmfReceiver",
    "ReceptionStats",
    "RtpPacket",
    "dtmf_packets",
    "ntp_time",
    "parse_rtcp",
    "parse_rtp",
    "receiver_report",
    "rtp_packet",
    "sender_report",
]

DTMF_EVENTS = "0123456789*#ABCD"
"""RFC 4733 event codes 0-15, as digits."""

_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")
_NTP_EPOCH = 2208988800  # seconds from 1900 to 1970


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket:
    """An RTP packet; :class:`ValueError` naming the problem if it is not one."""
    if len(data) < 12:
        raise ValueError(f"{len(data)} bytes is shorter than an RTP header")
    first, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise ValueError(f"RTP version {first >> 6}, not 2")
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # a header extension: 16-bit profile, 16-bit length in words
        if len(data) < start + 4:
            raise ValueError("the RTP header extension is cut short")
        start += 4 + 4 * struct.unpack_from("!H", data, start + 2)[0]
    end = len(data)
    if first & 0x20:
        end -= data[-1]
    if start > end:
        raise ValueError("the RTP header is longer than the packet")
    return RtpPacket(second & 0x7F, bool(second & 0x80), seq, timestamp, ssrc, data[start:end])


def rtp_packet(
    payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False
) -> bytes:
    """One RTP packet (no CSRCs, extension or padding)."""
    second = payload_type | (0x80 if marker else 0)
    return _HEADER.pack(0x80, second, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


# -- RFC 4733 ------------------------------------------------------------------------------


class DtmfReceiver:
    """Digits from RFC 4733 event packets: each event is reported once, at its first
    packet (RFC 4733 section 2.5.1.1: an event is known by its RTP timestamp)."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None  # (timestamp, event) reported last

    def packet(self, timestamp: int, payload: bytes) -> str | None:
        """The digit a new event starts, or None (a packet of an event already reported,
        an event that is not a digit, or a payload too short to be an event)."""
        if len(payload) < 4:
            return None
        event = payload[0]
        key = (timestamp, event)
        if key == self._last:
            return None
        self._last = key
        return DTMF_EVENTS[event] if event < len(DTMF_EVENTS) else None


def dtmf_packets(
    digit: str, duration_ms: int = 100, volume: int = 10, clock_rate: int = 8000
) -> list[tuple[bytes, bool]]:
    """The payloads, one per 20 ms, that send ``digit`` for ``duration_ms``, each with
    whether it is the event's first packet (which carries the marker bit). Durations are
    in units of ``clock_rate``, the audio's (RFC 4733 section 2.1). The end packet is
    sent three times, as RFC 4733 section 2.5.1.4 recommends."""
    event = DTMF_EVENTS.index(digit)
    steps = max(1, duration_ms // 20)
    step_units = clock_rate // 50
    packets = []
    for step in range(1, steps + 1):
        duration = step * step_units
        packets.append((_EVENT.pack(event, volume & 0x3F, duration), step == 1))
    end = _EVENT.pack(event, 0x80 | (volume & 0x3F), steps * step_units)
    packets += [(end, False)] * 3
    return packets


# -- RTCP ----------------------------------------------------------------------------------


def ntp_time(unix_seconds: float) -> int:
    """64-bit NTP timestamp of a Unix time."""
    return int((unix_seconds + _NTP_EPOCH) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


class ReceptionStats:
    """One incoming stream's figures for an RTCP report block (RFC 3550 section 6.4.1 and
    appendix A.3, A.8). Fed every packet; read once per report."""

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self._restart(None)

    def _restart(self, ssrc: int | None) -> None:
        self.ssrc = ssrc
        self.received = 0
        self._base: int | None = None  # first extended sequence number
        self._max = 0  # highest extended sequence number
        self._transit: float | None = None
        self.jitter = 0.0  # in timestamp units
        self._expected_prior = 0
        self._received_prior = 0
        self.last_sr: int = 0  # middle 32 bits of the last SR's NTP timestamp
        self.last_sr_at: float | None = None  # when it came (monotonic seconds)

    def packet(self, ssrc: int, seq: int, timestamp: int, arrival: float) -> None:
        if ssrc != self.ssrc:  # a new source: its figures start again
            self._restart(ssrc)
        if self._base is None:
            self._base = self._max = seq
        else:
            delta = (seq - self._max) & 0xFFFF
            if delta < 0x8000:
                self._max += delta
        self.received += 1
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            self.jitter += (d - self.jitter) / 16
        self._transit = transit

    def report_block(self, now: float) -> bytes:
        """The 24-byte report block; starts a new interval for the fraction lost."""
        if self.ssrc is None or self._base is None:
            return b""
        expected = self._max - self._base + 1
        lost = max(0, expected - self.received)
        interval_expected = expected - self._expected_prior
        interval_received = self.received - self._received_prior
        self._expected_prior, self._received_prior = expected, self.received
        interval_lost = interval_expected - interval_received
        fraction = (
            0
            if interval_expected <= 0 or interval_lost <= 0
            else ((interval_lost << 8) // interval_expected)
        )
        delay = 0
        if self.last_sr_at is not None:
            delay = int((now - self.last_sr_at) * 65536)
        return struct.pack(
            "!IIIIII",
            self.ssrc,
            (min(fraction, 255) << 24) | min(lost, 0x7FFFFF),
            self._max & 0xFFFFFFFF,
            int(self.jitter) & 0xFFFFFFFF,
            self.last_sr,
            delay & 0xFFFFFFFF,
        )


def _sdes(ssrc: int, cname: str) -> bytes:
    text = cname.encode()[:255]
    item = bytes([1, len(text)]) + text + b"\x00"
    item += b"\x00" * (-len(item) % 4)
    body = struct.pack("!I", ssrc) + item
    return struct.pack("!BBH", 0x81, 202, len(body) // 4) + body


def sender_report(
    ssrc: int,
    unix_now: float,
    rtp_timestamp: int,
    packets: int,
    octets: int,
    block: bytes,
    cname: str,
) -> bytes:
    """A compound RTCP packet: SR (with one report block if ``block``) and SDES CNAME."""
    ntp = ntp_time(unix_now)
    count = 1 if block else 0
    body = (
        struct.pack(
            "!IIIIII",
            ssrc,
            ntp >> 32,
            ntp & 0xFFFFFFFF,
            rtp_timestamp & 0xFFFFFFFF,
            packets & 0xFFFFFFFF,
            octets & 0xFFFFFFFF,
        )
        + block
    )
    return struct.pack("!BBH", 0x80 | count, 200, len(body) // 4) + body + _sdes(ssrc, cname)


def receiver_report(ssrc: int, block: bytes, cname: str) -> bytes:
    """A compound RTCP packet: RR (one report block if ``block``) and SDES CNAME."""
    count = 1 if block else 0
    body = struct.pack("!I", ssrc) + block
    return struct.pack("!BBH", 0x80 | count, 201, len(body) // 4) + body + _sdes(ssrc, cname)


@dataclass(frozen=True, slots=True)
class RtcpReport:
    """What a received compound packet said: its sender's SSRC, and for a sender report
    the middle 32 bits of its NTP timestamp (echoed as LSR in our reports)."""

    kind: int
    ssrc: int
    ntp_middle: int | None


def parse_rtcp(data: bytes) -> list[RtcpReport]:
    """The SR and RR packets in a compound RTCP packet (others are skipped);
    :class:`ValueError` if it is not RTCP."""
    reports, offset = [], 0
    while offset + 4 <= len(data):
        first, kind, length = struct.unpack_from("!BBH", data, offset)
        if first >> 6 != 2:
            raise ValueError("not an RTCP packet (version is not 2)")
        end = offset + 4 * (length + 1)
        if end > len(data):
            raise ValueError("an RTCP packet longer than the datagram")
        if kind == 200 and end - offset >= 28:
            ssrc, high, low = struct.unpack_from("!III", data, offset + 4)
            reports.append(RtcpReport(kind, ssrc, ((high & 0xFFFF) << 16) | (low >> 16)))
        elif kind == 201 and end - offset >= 8:
            reports.append(RtcpReport(kind, struct.unpack_from("!I", data, offset + 4)[0], None))
        offset = end
    if not reports and offset == 0:
        raise ValueError("not an RTCP packet")
    return reports
