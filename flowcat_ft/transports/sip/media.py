"""RTP media for one call, on an event-loop thread: a :class:`CallEdge` whose wire is RTP.

Each call binds an RTP port (even, from the configured range; RTCP on the next one) on its
media loop. Every 20 ms, from the loop's :class:`~flowcat_ft.transports.pacer.Ticker`:

- **in**: the next frame from the call's :class:`~flowcat_ft.audio.jitter.JitterBuffer`
  (reordered, duplicates and late packets dropped, losses concealed) goes to the pipeline,
  decoded by the call's :class:`~flowcat_ft.transports.sip.codecs.RtpCodec` (G.711 with
  the loop's other calls at the :class:`~flowcat_ft.transports.edge.LoopEdge`; Opus
  straight to the pipeline's rate). Only the negotiated audio payload type is audio;
  RFC 4733 packets become :class:`~flowcat_ft.frames.InputDTMFFrame`\\ s; other payload
  types, and packets from anywhere but the source we latched onto, are counted and
  dropped. A new SSRC starts a new jitter buffer.
- **out**: one packet, always: the agent's next 20 ms of audio, or silence while it is
  quiet, encoded by the codec, so timestamps (at the codec's clock: 160 a packet for
  G.711, 960 for Opus) run on without gaps; the marker bit starts the stream and each of
  the agent's talkspurts. After a loop stall of over 200 ms the packets missed are not
  sent late in a burst: the timestamps skip them, and the next packet has the marker.
  An interruption drops the queued audio at once (the next packet is silence); a pause
  (:class:`~flowcat_ft.frames.PauseOutputFrame`) sends silence in its place until the
  resume.
  :class:`~flowcat_ft.frames.OutputDTMFFrame`\\ s are sent as RFC 4733 events in their
  place in the audio. While the peer holds the call (``sendonly`` or
  ``inactive``) nothing is sent and the agent's audio is dropped.

SRTP (when the SDP agreed keys, :mod:`flowcat_ft.sip.srtp`): every packet out is
encrypted and tagged, RTCP too; a packet in whose tag is wrong, or a replay, is counted
(``unauthenticated``) and dropped before anything else looks at it, latching included.

With ``MediaOptions(pace_output=False)`` (benchmarks, like the WebSocket sessions' option)
there is no playout clock on either side: each audio packet goes to the pipeline as it
arrives, without the jitter buffer, and the agent's audio goes out as it comes, one packet
per 20 ms chunk, with nothing sent in between (no silence, no DTMF events), so a round trip
measures the runtime rather than the clocks. Nor is the session ticked every 20 ms (an
unpaced WebSocket session's playout is not either): only its once-a-second checks run.

Reading: each RTP and RTCP socket is a reader of the loop, and a wake-up reads every
datagram waiting on it (up to :data:`MAX_READS`), not one per pass of the loop as asyncio's
datagram transports do (:mod:`~flowcat_ft.transports.sip.datagrams`): cheaper per packet,
and after a stall of the loop every packet that came meanwhile is in the jitter buffer
before the ticks catch up. Sending is one ``sendto``; a datagram the socket cannot take now
is dropped (a real-time stream does not wait).

Symmetric RTP (RFC 4961): packets go to the SDP's address until the first packet comes,
then to wherever that packet came from (the peer's NAT). RTCP: a sender report (or a
receiver report, before we have sent) every :data:`RTCP_INTERVAL` seconds, with a report
block for the peer's stream. No packet for ``timeout`` seconds while the peer should be
sending: the call is hung up (``on_hangup``).

Threading contract: an :class:`RtpSession` is used only on its loop; the dialog, on the
signalling loop, reaches it through ``io.loop.call_soon_threadsafe`` and is told of a
hang-up through ``on_hangup``, which runs on the media loop and hands over itself.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from flowcat_ft.audio.jitter import JitterBuffer
from flowcat_ft.frames import EndFrame, Frame, InputDTMFFrame, OutputDTMFFrame
from flowcat_ft.serializers import ProtocolError
from flowcat_ft.sip.rtp import (
    DtmfReceiver,
    ReceptionStats,
    dtmf_packets,
    parse_rtcp,
    parse_rtp,
    receiver_report,
    rtp_packet,
    sender_report,
)
from flowcat_ft.sip.srtp import SUITES, SrtpContext, SrtpError
from flowcat_ft.transports.call_edge import CallEdge, TurnLog
from flowcat_ft.transports.sip.codecs import RtpCodec, rtp_codec
from flowcat_ft.transports.sip.datagrams import bind, read_datagrams, send_datagram

if TYPE_CHECKING:
    from flowcat_ft.loops import EventLoopThread
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.runtime import Runtime
    from flowcat_ft.sip.sdp import Negotiated
    from flowcat_ft.transports.edge import LoopEdge
    from flowcat_ft.transports.pacer import Ticker
    from flowcat_ft.transports.session import MediaOptions

logger = logging.getLogger("flowcat_ft.sip")

__all__ = ["RTCP_INTERVAL", "RtpPorts", "RtpSession"]

FRAME_SECS = 0.02
OPUS_PIPELINE_RATE = 16000  # an Opus call's pipeline rate when the options name none
RTCP_INTERVAL = 5.0
MAX_QUEUED_SECS = 20.0  # agent audio queued ahead of playout (more is dropped)
MAX_DEPTH_MS = 1000  # packets further ahead of playout than this are dropped (a flood)
MAX_READS = 64  # datagrams read from one socket per wake-up (the loop's other work goes on)
_CATCH_UP = 10  # ticks made up at once after the loop stalled; past that, skip ahead


class RtpPorts:
    """Pairs of UDP ports (RTP even, RTCP the next) from ``low``..``high``, handed out
    in turn and bound at once. Thread-safe: ``_next`` is taken under ``_lock``."""

    def __init__(self, low: int, high: int) -> None:
        if low % 2:
            low += 1
        if not 0 < low < high <= 65535:
            raise ValueError(f"bad RTP port range {low}-{high}")
        self.low, self.high = low, high
        self._lock = threading.Lock()
        self._next = itertools.cycle(range(low, high, 2))

    def bind(self, host: str) -> tuple[socket.socket, socket.socket]:
        """Two bound, non-blocking UDP sockets; ``OSError`` when the range is full."""
        for _ in range((self.high - self.low) // 2):
            with self._lock:
                port = next(self._next)
            try:
                rtp = bind(host, port)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    continue
                raise
            try:
                return rtp, bind(host, port + 1)
            except OSError as error:
                rtp.close()
                if error.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free RTP ports in {self.low}-{self.high}")


class RtpSession(CallEdge):
    """One call's RTP (see the module docstring). Made on any thread; :meth:`open` and
    everything after run on ``io``'s loop."""

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline,
        io: EventLoopThread,
        edge: LoopEdge,
        ticker: Ticker,
        options: MediaOptions,
        *,
        timeout: float,
        turn_log: TurnLog | None = None,
    ) -> None:
        super().__init__(runtime, pipeline, io, edge, options, turn_log)
        self._ticker = ticker
        self.timeout = timeout
        # Asks the dialog to hang up, with the reason; set by the dialog, called on this
        # loop (the dialog hands it over to the signalling loop).
        self.on_hangup: Callable[[str], None] = lambda reason: None
        self.negotiated: Negotiated | None = None
        self._codec: RtpCodec | None = None  # the negotiated codec's state; None before
        self.port = 0
        self._rtp: socket.socket | None = None
        self._rtcp: socket.socket | None = None
        self._remote: tuple[str, int] | None = None
        self._latched = False
        self._ssrc = secrets.randbits(32)
        self._cname = f"flowcat-{self._ssrc:08x}"
        self._seq = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._queue: deque[bytes] = deque(maxlen=int(MAX_QUEUED_SECS / FRAME_SECS))
        self._dtmf_out: deque[tuple[bytes, bool]] = deque()
        self._dtmf_timestamp = 0
        self._talking = False  # the last packet sent carried agent audio
        self._skipped = False  # timestamps skipped ahead after the loop stalled
        self._jitter: JitterBuffer | None = None
        self._remote_ssrc: int | None = None
        self._dtmf_in = DtmfReceiver()
        self._srtp_out: SrtpContext | None = None  # protects what we send (our key)
        self._srtp_in: SrtpContext | None = None  # checks what we receive (the peer's key)
        self._stats = ReceptionStats()
        self._in_clock: float | None = None  # when the next frame is due to the pipeline
        self._in_step = FRAME_SECS  # the peer's packet time (its ptime)
        self._out_clock = 0.0  # when the next packet is due out
        self._last_packet = 0.0
        self._next_rtcp = 0.0
        self._hanging_up = False
        self._tasks: set[asyncio.Task] = set()
        self.closed = False
        self.packets_in = self.packets_out = self.octets_out = 0
        self.dtmf_in = self.dtmf_out = 0
        self.ignored = 0  # packets of other payload types or sources, or past the depth
        self.unauthenticated = 0  # SRTP or SRTCP packets with a wrong tag, or replays
        self.rtcp_in = self.rtcp_out = 0

    @property
    def wire_codec(self) -> str | None:
        return self._codec.wire_codec if self._codec is not None else None

    @property
    def wire_rate(self) -> int:
        return self._codec.wire_rate if self._codec is not None else 8000

    @property
    def _clock_rate(self) -> int:
        """The RTP clock's rate: the codec's (G.711's before one is agreed)."""
        return self._codec.clock_rate if self._codec is not None else 8000

    @property
    def _frame_samples(self) -> int:
        """The RTP timestamp's step per 20 ms packet."""
        return self._clock_rate // 50

    def log_context(self, **fields: object) -> dict[str, object]:
        return super().log_context(carrier="sip") | fields

    # -- life ------------------------------------------------------------------------------

    async def bind(self, ports: RtpPorts, host: str) -> int:
        """Bind the RTP and RTCP ports and read them, on the media loop; returns the RTP
        port (``OSError``: none free)."""
        self._rtp, self._rtcp = ports.bind(host)
        self._loop.add_reader(self._rtp, read_datagrams, self._rtp, self.rtp_received, MAX_READS)
        self._loop.add_reader(self._rtcp, read_datagrams, self._rtcp, self.rtcp_received, MAX_READS)
        self.port = self._rtp.getsockname()[1]
        return self.port

    def open(self, negotiated: Negotiated | None, metadata: dict) -> None:
        """Open the call on the pipeline and start the clock (``negotiated`` None: the
        answer comes later, in the ACK; nothing is sent until :meth:`update`).
        Raises :class:`~flowcat_ft.runtime.RuntimeFullError` if the runtime is full."""
        if negotiated is not None:
            rate = self.options.sample_rate or OPUS_PIPELINE_RATE
            self._codec = rtp_codec(negotiated.codec, rate)
        self._open_call(self.wire_rate, {"carrier": "sip", **metadata})
        if negotiated is not None:
            self.update(negotiated)
        now = self._loop.time()
        self._out_clock = now
        self._last_packet = now
        self._next_rtcp = now + RTCP_INTERVAL / 2  # RFC 3550 6.2: the first at half
        if self.options.pace_output:
            self._ticker.add(self)
        self._ticker.every_second(self._check)
        logger.info("call started", extra=self.log_context())

    def update(self, negotiated: Negotiated) -> None:
        """A new offer/answer: codec, where the peer's RTP is, hold or not."""
        old = self.negotiated
        self.negotiated = negotiated
        if old is None or (old.remote_address, old.remote_port) != (
            negotiated.remote_address,
            negotiated.remote_port,
        ):
            self._remote = (negotiated.remote_address, negotiated.remote_port)
            self._latched = False  # latch again onto wherever the new stream comes from
        if self._codec is None or (old is not None and old.codec != negotiated.codec):
            self._codec = rtp_codec(negotiated.codec, self.pipeline_rate)
            self._jitter = None
            self._wire_rate_changed()
        self._stats.clock_rate = self._clock_rate
        if old is None or old.srtp != negotiated.srtp:
            keys = negotiated.srtp
            suite = SUITES[keys.suite] if keys is not None else None
            self._srtp_out = SrtpContext(suite, keys.local) if keys is not None else None
            self._srtp_in = SrtpContext(suite, keys.remote) if keys is not None else None
        if not negotiated.send:
            self._queue.clear()
        self._last_packet = self._loop.time()

    def close(self, reason: str) -> None:
        """End the call (if it has not ended) and release the ports."""
        if self.closed:
            return
        self.closed = True
        self.on_hangup = _no_hangup  # the dialog's: it holds this session (no cycle)
        self._ticker.discard(self, self._check)
        if self.call is not None and not self.call.done:
            self.call.cancel(reason)
        for sock in (self._rtp, self._rtcp):
            if sock is not None:
                self._loop.remove_reader(sock)
                sock.close()
        if self.call is not None:
            logger.info(
                "call ended: %s; RTP %d packets in, %d out, %d ignored",
                reason,
                self.packets_in,
                self.packets_out,
                self.ignored,
                extra=self.log_context(),
            )

    def _hang_up(self, reason: str) -> None:
        if not self._hanging_up and not self.closed:
            self._hanging_up = True
            self.on_hangup(reason)

    def _check(self, now: float) -> None:
        """Once a second: the inactivity timeout, and RTCP when its time has come."""
        negotiated = self.negotiated
        if negotiated is not None and negotiated.receive and now - self._last_packet > self.timeout:
            self._hang_up(f"no RTP for {self.timeout:g} s")
        if now >= self._next_rtcp:
            self._next_rtcp = now + RTCP_INTERVAL
            self._send_rtcp(now)

    # -- the 20 ms tick --------------------------------------------------------------------

    def tick(self, now: float) -> bool:
        """Called by the ticker every 20 ms, when output is paced: the pipeline's next frame
        in, our next packet out. True while the session is open (to be ticked again)."""
        if self.closed:
            return False
        if self._in_clock is not None:
            if now - self._in_clock > _CATCH_UP * FRAME_SECS:
                self._in_clock = now  # the loop stalled: skip, do not burst
            while self._in_clock <= now:
                self._next_input(self._in_clock)
                self._in_clock += self._in_step
        if now - self._out_clock > _CATCH_UP * FRAME_SECS:
            skipped = int((now - self._out_clock) / FRAME_SECS)
            self._timestamp += skipped * self._frame_samples
            self._out_clock += skipped * FRAME_SECS
            self._skipped = True  # the next packet's marker tells the peer to resync
        while self._out_clock <= now:
            self._next_output()
            self._out_clock += FRAME_SECS
        return True

    def _next_input(self, at: float) -> None:
        jitter, negotiated = self._jitter, self.negotiated
        if jitter is None or negotiated is None or not negotiated.receive:
            return
        self._to_pipeline(jitter.get(at).payload)

    def _to_pipeline(self, payload: bytes) -> None:
        codec = self._codec
        try:
            self._add_audio(codec.decode(payload), codec.wire_rate, codec.wire_codec)
        except (ProtocolError, ValueError) as error:
            self.ignored += 1
            logger.debug("RTP payload refused: %s", error)

    def _next_output(self) -> None:
        negotiated = self.negotiated
        timestamp = self._timestamp
        self._timestamp += self._frame_samples
        if negotiated is None or not negotiated.send or self._remote is None:
            return
        if self._dtmf_out and negotiated.dtmf_payload_type is not None:
            payload, first = self._dtmf_out.popleft()
            if first:
                self._dtmf_timestamp = timestamp
            self._send(negotiated.dtmf_payload_type, self._dtmf_timestamp, payload, first)
            return
        if self._queue and not self.paused:
            self._send_audio(timestamp, self._queue.popleft())
            return
        marker = self.packets_out == 0 or self._skipped
        self._talking = self._skipped = False
        self._send(negotiated.payload_type, timestamp, self._codec.silence(), marker)

    def _send_audio(self, timestamp: int, audio: bytes) -> None:
        """Send 20 ms of the agent's (wire) audio; the marker starts each talkspurt."""
        marker = not self._talking or self._skipped
        self._talking = True
        self._skipped = False
        payload = self._codec.encode(audio)
        self._send(self.negotiated.payload_type, timestamp, payload, marker)

    def _send(self, payload_type: int, timestamp: int, payload: bytes, marker: bool) -> None:
        packet = rtp_packet(payload_type, self._seq, timestamp, self._ssrc, payload, marker)
        if self._srtp_out is not None:
            packet = self._srtp_out.protect(packet)
        self._seq = (self._seq + 1) & 0xFFFF
        send_datagram(self._rtp, packet, self._remote)
        self.packets_out += 1
        self.octets_out += len(payload)

    # -- packets in ------------------------------------------------------------------------

    def rtp_received(self, data: bytes, source: tuple[str, int]) -> None:
        if self.closed:
            return
        negotiated = self.negotiated
        if self._srtp_in is not None:
            try:
                data = self._srtp_in.unprotect(data)
            except SrtpError as error:
                self.unauthenticated += 1
                logger.debug("SRTP packet dropped: %s", error)
                return
        try:
            packet = parse_rtp(data)
        except ValueError:
            self.ignored += 1
            return
        if negotiated is None or (self._latched and source[:2] != self._remote):
            self.ignored += 1
            return
        if not self._latched:
            self._remote, self._latched = source[:2], True
        now = self._loop.time()
        if packet.payload_type == negotiated.dtmf_payload_type:
            self._last_packet = now
            digit = self._dtmf_in.packet(packet.timestamp, packet.payload)
            if digit is not None and self.call is not None and not self.call.done:
                self.dtmf_in += 1
                self.call.push(InputDTMFFrame(digit))
            return
        if packet.payload_type != negotiated.payload_type:
            self.ignored += 1
            return
        self._last_packet = now
        self.packets_in += 1
        self._stats.packet(packet.ssrc, packet.seq, packet.timestamp, now)
        if not self.options.pace_output:
            self._to_pipeline(packet.payload)
            return
        if self._jitter is None or packet.ssrc != self._remote_ssrc:
            self._remote_ssrc = packet.ssrc
            self._jitter = self._jitter_buffer(packet.payload)
            if self._in_clock is None:
                self._in_clock = now + self._in_step
        if self._jitter.depth_ms > MAX_DEPTH_MS:
            self.ignored += 1
            return
        self._jitter.put(packet.seq, packet.timestamp, packet.payload, now)

    def _jitter_buffer(self, payload: bytes) -> JitterBuffer:
        """A jitter buffer for the peer's packet time, from its first packet (peers that
        send 30 ms packets are common)."""
        codec = self._codec
        frame_ms = codec.packet_ms(payload) or 20
        frame_ms = frame_ms if 10 <= frame_ms <= 60 else 20
        self._in_step = frame_ms / 1000
        depth = max(80, 4 * frame_ms)
        return JitterBuffer(codec.clock_rate, frame_ms, frame_ms, depth, codec=codec.jitter_codec)

    def rtcp_received(self, data: bytes, source: tuple[str, int]) -> None:
        try:
            if self._srtp_in is not None:
                data = self._srtp_in.unprotect_rtcp(data)
        except SrtpError:
            self.unauthenticated += 1
            return
        try:
            reports = parse_rtcp(data)
        except ValueError:
            return
        self.rtcp_in += 1
        for report in reports:
            if report.ntp_middle is not None:
                self._stats.last_sr = report.ntp_middle
                self._stats.last_sr_at = self._loop.time()

    def _send_rtcp(self, now: float) -> None:
        if self._remote is None or self._rtcp is None:
            return
        block = self._stats.report_block(now)
        if self.packets_out:
            timestamp = self._timestamp
            packet = sender_report(
                self._ssrc,
                time.time(),
                timestamp,
                self.packets_out,
                self.octets_out,
                block,
                self._cname,
            )
        else:
            packet = receiver_report(self._ssrc, block, self._cname)
        if self._srtp_out is not None:
            packet = self._srtp_out.protect_rtcp(packet)
        send_datagram(self._rtcp, packet, (self._remote[0], self._remote[1] + 1))
        self.rtcp_out += 1

    # -- the agent's output (CallEdge's hooks) ---------------------------------------------

    def _play(self, data: bytes) -> None:
        negotiated = self.negotiated
        if negotiated is None or not negotiated.send:
            self._carry.clear()
            return  # on hold: the caller hears nothing of it
        for chunk in self._chunks(data, FRAME_SECS):
            if self.options.pace_output:
                self._queue.append(chunk)
            elif self._remote is not None:
                self._send_audio(self._timestamp, chunk)
                self._timestamp += self._frame_samples

    def _clear(self) -> None:
        self._queue.clear()

    def _pause(self) -> None:
        """Silence goes out in place of the queued audio (RTP has no clear: the packet or
        two on their way play) until :meth:`_resume`."""

    def _resume(self) -> None:
        """The queued audio goes out again, from the next tick."""

    def _frame_out(self, frame: Frame) -> None:
        if type(frame) is OutputDTMFFrame and self.options.pace_output:
            self.dtmf_out += 1
            self._dtmf_out.extend(dtmf_packets(frame.digit, clock_rate=self._clock_rate))

    def _call_ended(self, frame: Frame) -> None:
        if type(frame) is not EndFrame:
            self._hang_up(frame.reason)
            return

        async def after_playout() -> None:
            while (self._queue or self._dtmf_out) and not self.closed:
                await asyncio.sleep(FRAME_SECS)
            self._hang_up("the agent ended the call")

        task = self._loop.create_task(after_playout())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _no_hangup(reason: str) -> None:
    """A closed session's ``on_hangup``."""
