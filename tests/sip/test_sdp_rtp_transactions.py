"""SDP offer/answer, RTP/RTCP packets and RFC 4733, and transaction timers: Sans-I/O."""

from __future__ import annotations

import pytest

from flowcat_ft.sip.message import parse
from flowcat_ft.sip.rtp import (
    DtmfReceiver,
    ReceptionStats,
    dtmf_packets,
    parse_rtcp,
    parse_rtp,
    rtp_packet,
    sender_report,
)
from flowcat_ft.sip.sdp import SdpError, accept_answer, answer, make_offer, parse_sdp
from flowcat_ft.sip.transaction import T1, T2, ClientTransaction, ServerTransaction

OFFER = """v=0\r
o=- 1 1 IN IP4 10.0.0.1\r
s=-\r
c=IN IP4 10.0.0.1\r
t=0 0\r
m=audio 4000 RTP/AVP 18 8 0 96 101\r
a=rtpmap:18 G729/8000\r
a=rtpmap:96 opus/48000/2\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-16\r
{direction}"""


def test_the_answer_takes_the_first_common_codec_and_telephone_event_only():
    description, negotiated = answer(parse_sdp(OFFER.format(direction="")), "10.0.0.2", 5000)
    assert (negotiated.codec.name, negotiated.payload_type) == ("PCMA", 8)
    assert negotiated.dtmf_payload_type == 101
    assert (negotiated.remote_address, negotiated.remote_port) == ("10.0.0.1", 4000)
    audio = parse_sdp(str(description)).audio
    assert audio.formats == [8, 101] and audio.direction == "sendrecv" and audio.ptime == 20


@pytest.mark.parametrize(
    ("offered", "answered", "send", "receive"),
    [
        ("a=sendonly\r\n", "recvonly", False, True),
        ("a=inactive\r\n", "inactive", False, False),
        ("a=recvonly\r\n", "sendonly", True, False),
    ],
)
def test_hold_and_directions(offered, answered, send, receive):
    description, negotiated = answer(parse_sdp(OFFER.format(direction=offered)), "h", 1)
    assert description.audio.direction == answered
    assert (negotiated.send, negotiated.receive) == (send, receive)
    old_hold = OFFER.format(direction="").replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0")
    assert answer(parse_sdp(old_hold), "h", 1)[1].on_hold


def test_no_common_codec_is_488_and_garbage_is_400():
    with pytest.raises(SdpError) as raised:
        only_others = OFFER.format(direction="").replace("18 8 0 96 101", "18 96 101")
        answer(parse_sdp(only_others), "h", 1)
    assert raised.value.status == 488 and "no codec in common" in raised.value.reason
    with pytest.raises(SdpError):
        answer(parse_sdp(OFFER.replace("m=audio 4000 RTP/AVP", "m=audio 4000 RTP/SAVP")), "h", 1)
    for bad in (
        "",
        "v=1\r\n",
        "v=0\r\nm=audio x RTP/AVP 0\r\n",
        "v=0\r\no=x\r\nm=audio 1 RTP/AVP 0\r\n",
    ):
        with pytest.raises(SdpError) as raised:
            parse_sdp(bad)
        assert raised.value.status in (400, 488)


def test_our_offer_and_the_peers_answer():
    offer = make_offer("10.0.0.2", 5000)
    reply = str(offer).replace("RTP/AVP 0 8 101", "RTP/AVP 8 101").replace("10.0.0.2", "10.0.0.9")
    negotiated = accept_answer(offer, parse_sdp(reply))
    assert negotiated.codec.name == "PCMA" and negotiated.dtmf_payload_type == 101
    assert negotiated.remote_address == "10.0.0.9"


def test_rtp_packets_and_rfc_4733_digits_once_each():
    packet = parse_rtp(rtp_packet(0, 65535, 2**32 - 1, 42, b"\xff" * 160, marker=True))
    assert (packet.seq, packet.timestamp, packet.ssrc, packet.marker) == (
        65535,
        2**32 - 1,
        42,
        True,
    )
    for bad in (b"", b"\x00" * 12, b"\x80" * 5):
        with pytest.raises(ValueError):
            parse_rtp(bad)
    receiver = DtmfReceiver()
    digits = [receiver.packet(1000, payload) for payload, _ in dtmf_packets("5")]
    digits += [receiver.packet(2000, payload) for payload, _ in dtmf_packets("#")]
    assert [d for d in digits if d] == ["5", "#"]
    assert [first for _, first in dtmf_packets("1", 100)] == [True] + [False] * 7


def test_rtcp_sender_report_round_trips_its_timestamp():
    stats = ReceptionStats()
    for seq in (1, 2, 4, 5):  # 3 lost
        stats.packet(7, seq, seq * 160, seq * 0.02)
    block = stats.report_block(1.0)
    packet = sender_report(9, 1700000000.5, 1234, 10, 1600, block, "flowcat")
    (report,) = parse_rtcp(packet)
    assert report.kind == 200 and report.ssrc == 9 and report.ntp_middle is not None
    assert int.from_bytes(block[4:8]) & 0xFFFFFF == 1  # cumulative loss
    with pytest.raises(ValueError):
        parse_rtcp(b"\x00\x00\x00\x00")


class Clock:
    """Timers by hand: ``advance`` runs what falls due."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[list] = []

    def call_later(self, delay, callback):
        timer = [self.now + delay, callback, False]
        self.timers.append(timer)

        class Handle:
            def cancel(self_inner):
                timer[2] = True

        return Handle()

    def advance(self, until: float) -> None:
        while due := sorted(
            (t for t in self.timers if not t[2] and t[0] <= until), key=lambda t: t[0]
        ):
            timer = due[0]
            timer[2] = True
            self.now = timer[0]
            timer[1]()
        self.now = until


INVITE = (
    b"INVITE sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:b@h>;tag=1\r\n"
    b"To: <sip:a@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
)


def test_timers_a_and_b_for_an_unanswered_invite():
    clock, sent, timeouts = Clock(), [], []
    request = parse(INVITE)
    ClientTransaction(
        request,
        lambda d: sent.append(clock.now),
        clock,
        reliable=False,
        on_response=lambda r: None,
        on_timeout=lambda: timeouts.append(clock.now),
    )
    clock.advance(64 * T1 + 1)
    assert sent == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A doubles without a cap
    assert timeouts == [64 * T1]  # B


def test_timers_g_and_h_for_a_final_response_without_an_ack():
    clock, sent, timeouts = Clock(), [], []
    request = parse(INVITE)
    transaction = ServerTransaction(
        request,
        lambda d: sent.append(clock.now),
        clock,
        reliable=False,
        on_timeout=lambda: timeouts.append(1),
    )
    transaction.respond(request.response(486, to_tag="x"))
    clock.advance(10)
    assert sent == [0.0, 0.5, 1.5, 3.5, 7.5]  # G: doubling up to T2
    assert sent[-1] - sent[-2] == T2
    clock.advance(64 * T1 + 1)
    assert timeouts == [1]  # H


def test_an_ack_stops_the_retransmissions():
    clock, sent = Clock(), []
    request = parse(INVITE)
    transaction = ServerTransaction(
        request, lambda d: sent.append(clock.now), clock, reliable=False
    )
    transaction.respond(request.response(200, to_tag="x"))
    clock.advance(1.0)
    transaction.acknowledged()
    clock.advance(60)
    assert sent == [0.0, 0.5]
