"""RTP from a caller written here: reordered, duplicated and lost packets, an SSRC change
mid-call, a caller that stops sending, and a barge-in while the agent's audio is queued.
The signalling is the real server's; the caller is a UDP socket speaking SIP and RTP with
flowcat_ft.sip's Sans-I/O codecs."""

from __future__ import annotations

import itertools
import re
import socket
import subprocess
import time

import numpy as np
from helpers import wait_until
from peers import need_program
from sip_helpers import Heard, listening

from flowcat_ft import FrameProcessor, Pipeline
from flowcat_ft.frames import (
    InputDTMFFrame,
    OutputAudioRawFrame,
    PauseOutputFrame,
    ResumeOutputFrame,
)
from flowcat_ft.sip.message import Headers, Request, Response, Uri, parse
from flowcat_ft.sip.rtp import RtpPacket, dtmf_packets, parse_rtp, rtp_packet
from flowcat_ft.sip.sdp import make_offer, parse_sdp
from flowcat_ft.transports.sip.datagrams import read_datagrams
from flowcat_ft.transports.sip.media import MAX_READS


class Caller:
    """A UDP SIP caller with an RTP socket, driven step by step by the test."""

    def __init__(self, server) -> None:
        self.server = server
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind(("127.0.0.1", 0))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.settimeout(0.005)
        self.sip.settimeout(5)
        self.port = self.sip.getsockname()[1]
        self.call_id = f"faults-{self.port}"
        self.remote = None

    def headers(self, method: str, cseq: int, to_tag: str = "") -> Headers:
        headers = Headers()
        headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{cseq}{method};rport")
        headers.add("From", f"<sip:caller@127.0.0.1:{self.port}>;tag=c1")
        headers.add("To", f"<sip:agent@127.0.0.1>{to_tag}")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        headers.add("Contact", f"<sip:caller@127.0.0.1:{self.port}>")
        return headers

    def send(self, request: Request) -> None:
        self.sip.sendto(bytes(request), ("127.0.0.1", self.server.port))

    def receive(self) -> Request | Response:
        return parse(self.sip.recv(65536))

    def call(self, codecs: tuple[str, ...] = ("PCMU",)) -> None:
        offer = make_offer("127.0.0.1", self.rtp.getsockname()[1], codecs=codecs)
        invite = Request("INVITE", Uri.parse(f"sip:agent@127.0.0.1:{self.server.port}"))
        invite.headers = self.headers("INVITE", 1)
        invite.headers.add("Content-Type", "application/sdp")
        invite.body = str(offer).encode()
        self.send(invite)
        while (response := self.receive()).status < 200:
            pass
        assert response.status == 200
        self.to_tag = f";tag={response.to.tag}"
        answer = parse_sdp(response.body).audio
        self.remote = ("127.0.0.1", answer.port)
        ack = Request("ACK", invite.uri, self.headers("ACK", 1, self.to_tag))
        self.send(ack)

    def stream(self, packets: list[tuple[int, int, int, bytes]]) -> list[bytes]:
        """Send (ssrc, seq, timestamp, payload) packets 20 ms apart; return the audio
        payloads received meanwhile and for half a second after."""
        got: list[bytes] = []
        for ssrc, seq, timestamp, payload in packets:
            self.rtp.sendto(rtp_packet(0, seq, timestamp, ssrc, payload), self.remote)
            got += self.drain(0.02)
        return got + self.drain(0.5)

    def press(self, digit: str, timestamp: int) -> None:
        """A key, as RFC 4733 events (payload type 101, as our offer says)."""
        for seq, (payload, first) in enumerate(dtmf_packets(digit)):
            packet = rtp_packet(101, 5000 + seq, timestamp, 4242, payload, marker=first)
            self.rtp.sendto(packet, self.remote)

    def packets(self, seconds: float) -> list[RtpPacket]:
        """The audio packets that come within ``seconds``."""
        got, until = [], time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                packet = parse_rtp(self.rtp.recv(2048))
            except TimeoutError:
                continue
            if packet.payload_type == 0:
                got.append(packet)
        return got

    def drain(self, seconds: float) -> list[bytes]:
        got, until = [], time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                packet = parse_rtp(self.rtp.recv(2048))
            except TimeoutError:
                continue
            if packet.payload_type == 0:
                got.append(packet.payload)
        return got


def tones(count: int, first: int = 0) -> list[bytes]:
    """Distinct 20 ms µ-law payloads from the loudest codes (0x00-0x0F): a concealed
    repeat, 6 dB quieter, lands 16 codes up, so it never passes for one of them."""
    return [bytes([(first + i) % 16, (first + i) // 16]) * 80 for i in range(count)]


def test_reordered_duplicated_and_lost_packets_and_a_new_ssrc(sip_server):
    server = sip_server(listening(Heard()))
    caller = Caller(server)
    caller.call()
    payloads = tones(60)
    packets = [(1111, 100 + i, 160 * i, p) for i, p in enumerate(payloads)]
    packets[10], packets[11] = packets[11], packets[10]  # reordered
    packets.insert(20, packets[19])  # duplicated
    del packets[31]  # lost (payload 30)
    # A new source mid-call: a new SSRC, sequence numbers and timestamps from elsewhere.
    packets += [(2222, 9000 + i, 777777 + 160 * i, p) for i, p in enumerate(tones(30, 60))]
    got = caller.stream(packets)
    sent = payloads + tones(30, 60)
    heard = [sent.index(p) for p in got if p in sent]
    # What comes back comes once, in order, the reordered pair put right, the duplicate
    # dropped, the lost packet missing, the new source's audio after the old one's. (The
    # jitter buffer may drop a few more to catch up when a loaded machine bunches them.)
    assert heard == sorted(set(heard))
    assert 30 not in heard and len(heard) >= len(sent) * 2 // 3
    assert max(heard) >= 80
    media = server.calls[0].media
    assert media.packets_in == len(packets)
    bye = Request("BYE", Uri.parse(f"sip:agent@127.0.0.1:{server.port}"))
    bye.headers = caller.headers("BYE", 2, caller.to_tag)
    caller.send(bye)
    assert caller.receive().status == 200
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_one_wake_up_reads_every_waiting_datagram_up_to_the_bound():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        rtp.bind(("127.0.0.1", 0))
        rtp.setblocking(False)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for n in range(MAX_READS + 3):
                peer.sendto(n.to_bytes(2, "big"), rtp.getsockname())
        read: list[bytes] = []

        def wake_up() -> None:
            read_datagrams(rtp, lambda data, source: read.append(data), MAX_READS)

        wake_up()
        assert read == [n.to_bytes(2, "big") for n in range(MAX_READS)]
        wake_up()  # the rest, next time
        assert len(read) == MAX_READS + 3
        wake_up()  # nothing waits: returns
        assert len(read) == MAX_READS + 3


def test_a_caller_that_stops_sending_is_hung_up(sip_server):
    server = sip_server(listening(Heard()), rtp_timeout=1.0)
    caller = Caller(server)
    caller.call()
    caller.stream([(1, i, 160 * i, p) for i, p in enumerate(tones(10))])
    bye = caller.receive()  # within a second or two of the last packet
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert "no RTP for 1 s" in bye.headers.get("Reason")
    ok = Response(200, "OK", bye.response(200).headers)
    caller.sip.sendto(bytes(ok), ("127.0.0.1", server.port))
    assert wait_until(lambda: server.ended and server.runtime.pool.in_use == 0)
    assert server.ended[-1].end_reason == "no RTP for 1 s"


class Talker(FrameProcessor):
    """Key 1: three seconds of a loud tone at once (queued at the transport); key 2: an
    interruption, as a barge-in would make; keys 3 and 4: a pause and a resume."""

    def process(self, frame, direction):
        if type(frame) is InputDTMFFrame and frame.digit == "1":
            tone = (np.sin(np.arange(160) * 2 * np.pi / 16) * 12000).astype("<i2").tobytes()
            for _ in range(150):
                self.push(OutputAudioRawFrame.from_bytes(self.call.pool, tone, 8000), direction)
        elif type(frame) is InputDTMFFrame and frame.digit == "2":
            self.interrupt()
        elif type(frame) is InputDTMFFrame and frame.digit in "34":
            self.push(PauseOutputFrame() if frame.digit == "3" else ResumeOutputFrame())
        self.push(frame, direction)


def test_a_barge_in_flushes_the_queued_audio_and_timestamps_run_on(sip_server):
    server = sip_server(Pipeline([Talker]))
    caller = Caller(server)
    caller.call()
    caller.rtp.settimeout(0.005)
    caller.press("1", timestamp=1000)
    packets = caller.packets(0.6)  # 30 of the 150 loud packets
    caller.press("2", timestamp=9000)
    after = caller.packets(1.0)
    loud = [p for p in packets if p.payload != b"\xff" * 160]
    assert len(loud) > 10 and loud[0].marker  # a talkspurt starts with the marker bit
    # Without the flush 120 loud packets would still be queued; a few may be on the way.
    assert sum(p.payload != b"\xff" * 160 for p in after) < 25
    assert after[-1].payload == b"\xff" * 160  # then silence, one packet per 20 ms
    # Timestamps run on at 160 a packet; past a loop stall of over 200 ms they skip the
    # packets not sent (silence is not sent late in a burst), and never run back.
    stream = packets + after
    steps = [
        (two.timestamp - one.timestamp) & 0xFFFFFFFF for one, two in itertools.pairwise(stream)
    ]
    assert all(step > 0 and step % 160 == 0 for step in steps)
    assert steps.count(160) >= len(steps) * 3 // 4


def test_a_pause_sends_silence_in_place_of_the_queued_audio_and_the_resume_plays_it(sip_server):
    server = sip_server(Pipeline([Talker]))
    caller = Caller(server)
    caller.call()
    caller.rtp.settimeout(0.005)
    silent = b"\xff" * 160
    caller.press("1", timestamp=1000)
    stream = caller.packets(0.6)  # about 30 of the 150 loud packets
    caller.press("3", timestamp=9000)
    while stream[-1].payload != silent:  # paused: silence goes out
        stream += caller.packets(0.1)
    caller.press("4", timestamp=17000)
    deadline = time.monotonic() + 10
    while sum(p.payload != silent for p in stream) < 150 and time.monotonic() < deadline:
        stream += caller.packets(0.2)
    # Every loud packet, none lost: loud, then silence while paused, then loud to the end.
    talk = "".join("s" if p.payload == silent else "t" for p in stream).strip("s")
    assert talk.count("t") == 150 and re.fullmatch("t+s+t+", talk), talk
    assert server.calls[0].media.pauses == 1


def test_an_unsupported_require_is_420_naming_it(sip_server):
    server = sip_server(listening(Heard()))
    caller = Caller(server)
    invite = Request("INVITE", Uri.parse(f"sip:agent@127.0.0.1:{server.port}"))
    invite.headers = caller.headers("INVITE", 1)
    invite.headers.add("Require", "timer, 100rel, foo")
    caller.send(invite)
    response = caller.receive()
    assert response.status == 420 and response.options("Unsupported") == {"100rel", "foo"}
    assert server.runtime.calls == []


def test_sipsak_options_keepalive_is_answered(sip_server):
    server = sip_server(listening(Heard()))
    result = subprocess.run(
        [need_program("sipsak"), "-s", f"sip:agent@127.0.0.1:{server.port}", "-vv"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode()
    assert b"200 OK" in result.stdout and b"Allow: INVITE" in result.stdout
