"""JitterBuffer on simulated RTP traces: jitter, loss, reordering, duplicates, late packets
and the sequence number wrapping at 65536.  Whatever the trace, the playout clock gets one
frame per tick, packets come out in sending order, and the counts add up."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from flowcat_ft.audio.g711 import ulaw_decode
from flowcat_ft.audio.jitter import CONCEAL_REPEATS, JitterBuffer

RATE = 8000
FRAME = 0.020
SAMPLES = 160
BASE_DELAY = 0.030  # the network's fixed delay
PHASE = 0.007  # where the playout clock ticks, within a packet interval


def payload(k: int) -> bytes:
    """Packet k's audio: a constant level, different for every packet."""
    return np.full(SAMPLES, 100 + 10 * k, np.int16).tobytes()


@dataclass
class Trace:
    """Packets as the network delivers them: (arrival time, seq, timestamp, payload, k),
    k numbering the packets in sending order."""

    count: int
    start_seq: int = 0
    arrivals: list = field(default_factory=list)

    @classmethod
    def sent(cls, count: int, start_seq: int = 0, delays=None) -> "Trace":
        """*count* packets, one every 20 ms; packet k delayed by ``delays[k]`` more."""
        trace = cls(count, start_seq)
        for k in range(count):
            extra = 0.0 if delays is None else delays[k]
            trace.add(k, k * FRAME + BASE_DELAY + extra)
        return trace

    def add(self, k: int, arrival: float) -> None:
        seq = (self.start_seq + k) & 0xFFFF
        self.arrivals.append((arrival, seq, k * SAMPLES, payload(k), k))

    def drop(self, ks) -> None:
        ks = set(ks)
        self.arrivals = [a for a in self.arrivals if a[4] not in ks]

    def play(self, buffer: JitterBuffer) -> list:
        """Tick the playout clock until every packet has arrived and the buffer is empty;
        return what each tick gave."""
        arrivals = sorted(self.arrivals)
        out = []
        i = 0
        now = PHASE
        while i < len(arrivals) or buffer.depth_ms > 0:
            while i < len(arrivals) and arrivals[i][0] <= now:
                arrival, seq, timestamp, data, _ = arrivals[i]
                buffer.put(seq, timestamp, data, arrival)
                i += 1
            out.append(buffer.get(now))
            now += FRAME
        return out


def played(out, start_seq: int = 0) -> list[int]:
    """The packets played, as k (sending order), checking each one's payload."""
    ks = []
    for tick in out:
        if tick.seq is not None:
            k = (tick.seq - start_seq) & 0xFFFF
            assert tick.payload == payload(k)
            ks.append(k)
    return ks


def check(out, start_seq: int = 0) -> list[int]:
    """One whole frame per tick, and packets in order; return the packets played."""
    assert all(len(tick.payload) == 2 * SAMPLES for tick in out)
    ks = played(out, start_seq)
    assert ks == sorted(set(ks))
    return ks


def test_a_clean_stream_plays_every_packet_within_a_frame():
    trace = Trace.sent(500)
    buffer = JitterBuffer(RATE)
    out = trace.play(buffer)
    assert check(out) == list(range(500))
    stats = buffer.stats()
    assert (stats.received, stats.lost, stats.late, stats.duplicate) == (500, 0, 0, 0)
    assert (stats.concealed, stats.dropped) == (0, 0)
    assert stats.target_ms == 20
    assert out[0] == (bytes(2 * SAMPLES), None)  # silence before the first packet
    assert len(out) == 500 + 2  # arrives 30 ms after sending, played at the next tick


@pytest.mark.parametrize("spread", [0.020, 0.040, 0.060])
def test_jitter_raises_the_target_and_packets_come_in_time(spread):
    rng = np.random.default_rng(1)
    trace = Trace.sent(3000, delays=rng.uniform(0, spread, 3000))
    buffer = JitterBuffer(RATE)
    out = trace.play(buffer)
    ks = check(out)
    stats = buffer.stats()
    # RFC 3550's J is about s / 3 for delays spread evenly over s (more when the packets
    # overtake each other); the target, 20 ms + 3 J, covers the spread.
    assert spread / 4 <= stats.jitter_ms / 1000 <= spread
    assert stats.target_ms >= min(80, 20 + spread * 1000)
    assert stats.lost == 0 and stats.duplicate == 0
    # While the jitter estimate grows, a few packets may come after their turn.
    assert stats.late <= 3 and len(ks) == 3000 - stats.late
    assert stats.concealed <= stats.late + 5


def test_lost_packets_are_counted_and_concealed_then_silenced():
    trace = Trace.sent(400)
    lost = [50, 120, 121, 122, 123, 124, 300]
    trace.drop(lost)
    buffer = JitterBuffer(RATE)
    out = trace.play(buffer)
    assert check(out) == sorted(set(range(400)) - set(lost))
    stats = buffer.stats()
    assert (stats.received, stats.lost, stats.late) == (400 - len(lost), len(lost), 0)
    assert stats.concealed == len(lost) and stats.dropped == 0
    # The burst: packet 119 again, 6 dB quieter each time, then silence.
    after = next(i for i, tick in enumerate(out) if tick.seq == 119) + 1
    burst = [np.frombuffer(tick.payload, np.int16)[0] for tick in out[after : after + 5]]
    level = np.frombuffer(payload(119), np.int16)[0]
    assert burst == [level >> 1, level >> 2, 0, 0, 0]
    assert CONCEAL_REPEATS == 2


def test_reordered_packets_come_out_in_order():
    # Every fourth packet overtakes the one sent before it by 15 ms.
    delays = np.zeros(400)
    delays[3::4] = -0.015
    delays[2::4] = 0.005
    trace = Trace.sent(400, delays=delays)
    buffer = JitterBuffer(RATE)
    assert check(trace.play(buffer)) == list(range(400))
    stats = buffer.stats()
    assert (stats.lost, stats.late, stats.duplicate) == (0, 0, 0)


def test_duplicates_are_dropped_and_counted():
    trace = Trace.sent(300)
    for k in range(0, 300, 7):
        trace.add(k, k * FRAME + BASE_DELAY + 0.013)  # a copy, 13 ms after the first
    for k in range(3, 300, 50):
        trace.add(k, k * FRAME + BASE_DELAY + 0.5)  # a copy long after the first played
    buffer = JitterBuffer(RATE)
    assert check(trace.play(buffer)) == list(range(300))
    stats = buffer.stats()
    assert stats.duplicate == len(range(0, 300, 7)) + len(range(3, 300, 50))
    assert (stats.received, stats.lost, stats.late) == (300, 0, 0)


def test_a_packet_later_than_the_deepest_buffer_is_dropped_as_late():
    delays = np.zeros(200)
    delays[100] = 0.3
    buffer = JitterBuffer(RATE)
    out = Trace.sent(200, delays=delays).play(buffer)
    assert check(out) == [k for k in range(200) if k != 100]
    stats = buffer.stats()
    assert (stats.received, stats.lost, stats.late, stats.duplicate) == (200, 0, 1, 0)
    assert stats.concealed == 1


@pytest.mark.parametrize("start_seq", [65535 - 150, 65535])
def test_sequence_numbers_wrap_around(start_seq):
    rng = np.random.default_rng(2)
    trace = Trace.sent(400, start_seq, delays=rng.uniform(0, 0.03, 400))
    trace.drop([140, 151, 152])  # around the wrap, for the first start
    trace.add(155, 155 * FRAME + BASE_DELAY + 0.004)  # and a duplicate
    buffer = JitterBuffer(RATE)
    ks = check(trace.play(buffer), start_seq)
    stats = buffer.stats()
    assert stats.lost == 3 and stats.duplicate == 1
    assert len(ks) == 400 - 3 - stats.late
    assert ks[-1] == 399


def test_a_jump_in_sequence_numbers_resynchronises():
    trace = Trace.sent(100)
    later = Trace.sent(100, start_seq=5000)
    trace.arrivals += [(a + 100 * FRAME, *rest) for a, *rest in later.arrivals]
    buffer = JitterBuffer(RATE)
    out = trace.play(buffer)
    assert [tick.seq for tick in out if tick.seq is not None] == [*range(100), *range(5000, 5100)]
    assert len(out) < 210  # no concealing the 4,900 missing numbers one by one


def test_g711_payloads_are_concealed_in_g711():
    buffer = JitterBuffer(RATE, codec="mulaw")
    codes = np.full(SAMPLES, 0x90, np.uint8).tobytes()  # a loud negative level
    buffer.put(0, 0, codes, 0.0)
    assert buffer.get(0.001) == (codes, 0)  # (payload, seq)
    concealed, _ = buffer.get(0.021)
    loud, quieter = np.empty(1, np.int16), np.empty(1, np.int16)
    ulaw_decode(np.frombuffer(codes[:1], np.uint8), loud)
    ulaw_decode(np.frombuffer(concealed[:1], np.uint8), quieter)
    assert abs(int(quieter[0]) - loud[0] // 2) < abs(loud[0]) * 0.05
    buffer.get(0.041)
    assert buffer.get(0.061) == (bytes([0xFF]) * SAMPLES, None)  # µ-law silence
