"""SRTP (RFC 3711) and its SDES keys in SDP (RFC 4568): the RFC's test vectors, tampering,
replays and rollover, Sans-I/O; offers SIPp makes that cannot be met get 488. Calls with
baresip's SRTP are in test_baresip.py."""

from __future__ import annotations

import base64
import sys

import pytest
from helpers import FREE_THREADED
from sip_helpers import Heard, listening, sipp

from flowcat_ft.sip.rtp import rtp_packet
from flowcat_ft.sip.sdp import SdpError, accept_answer, answer, make_offer, parse_sdp
from flowcat_ft.sip.srtp import SUITES, SrtpContext, SrtpError, new_key

# RFC 3711 appendix B.3, and libsrtp's reference packet for this key.
MASTER_KEY = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
MASTER_SALT = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
INLINE = base64.b64encode(MASTER_KEY + MASTER_SALT).decode()
SHA1_80 = SUITES["AES_CM_128_HMAC_SHA1_80"]


def test_the_rfc_3711_session_keys_and_libsrtps_reference_packet():
    context = SrtpContext(SHA1_80, INLINE)
    plain = bytes.fromhex("800f1234decafbadcafebabe") + b"\xab" * 16
    protected = context.protect(plain)
    assert protected.hex() == (
        "800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb"
    )
    assert SrtpContext(SHA1_80, INLINE).unprotect(protected) == plain
    assert sys._is_gil_enabled() is not FREE_THREADED  # OpenSSL through ctypes keeps it off


def test_tampering_and_replays_are_refused():
    sender, receiver = SrtpContext(SHA1_80, INLINE), SrtpContext(SHA1_80, INLINE)
    packet = sender.protect(rtp_packet(0, 7, 160, 0x1234, b"\x55" * 160))
    tampered = bytearray(packet)
    tampered[20] ^= 1
    with pytest.raises(SrtpError, match="authentication tag is wrong"):
        receiver.unprotect(bytes(tampered))
    assert receiver.unprotect(packet)[12:] == b"\x55" * 160
    with pytest.raises(SrtpError, match="replay"):
        receiver.unprotect(packet)
    with pytest.raises(SrtpError, match="too short"):
        receiver.unprotect(packet[:15])


def test_the_rollover_counter_follows_the_sequence_numbers_across_a_wrap():
    sender, receiver = SrtpContext(SHA1_80, INLINE), SrtpContext(SHA1_80, INLINE)
    packets = [
        sender.protect(rtp_packet(0, seq & 0xFFFF, seq * 160, 99, bytes([seq & 0xFF]) * 160))
        for seq in range(0xFFF0, 0x10010)
    ]
    late = packets.pop(10)  # reordered: arrives after the wrap
    for packet in packets:
        receiver.unprotect(packet)
    assert receiver.unprotect(late)[12] == 0xFA  # decrypted with the old rollover counter


def test_srtcp_both_ways():
    sender, receiver = SrtpContext(SHA1_80, INLINE), SrtpContext(SHA1_80, INLINE)
    report = bytes.fromhex("81c90007deadbeef") + bytes(24)
    first, second = sender.protect_rtcp(report), sender.protect_rtcp(report)
    assert first != second  # each its own index, so its own keystream
    assert receiver.unprotect_rtcp(first) == report == receiver.unprotect_rtcp(second)
    with pytest.raises(SrtpError, match="replay"):
        receiver.unprotect_rtcp(first)


def offer(proto: str, crypto: str = "") -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        f"m=audio 4000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n{crypto}"
    )


def test_an_sdes_offer_is_answered_with_our_own_key_under_its_tag():
    theirs = new_key()
    sdp = offer(
        "RTP/SAVP",
        "a=crypto:1 AES_CM_256_HMAC_SHA1_80 inline:x\r\n"  # a suite we do not take
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{theirs}\r\n",
    )
    description, negotiated = answer(parse_sdp(sdp), "10.0.0.2", 5000)
    audio = parse_sdp(str(description)).audio
    assert audio.proto == "RTP/SAVP" and len(audio.crypto) == 1
    tag, suite, ours = audio.crypto[0]
    assert (tag, suite) == (2, "AES_CM_128_HMAC_SHA1_32") and ours != theirs
    assert (negotiated.srtp.local, negotiated.srtp.remote) == (ours, theirs)


def test_what_cannot_be_met_is_488_naming_why():
    with pytest.raises(SdpError) as raised:
        answer(parse_sdp(offer("RTP/AVP")), "10.0.0.2", 5000, srtp="required")
    assert raised.value.status == 488 and "SRTP is required" in raised.value.reason
    with pytest.raises(SdpError) as raised:
        answer(
            parse_sdp(
                offer("RTP/SAVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{new_key()}\r\n")
            ),
            "10.0.0.2",
            5000,
            srtp="off",
        )
    assert raised.value.status == 488 and "SRTP is not taken" in raised.value.reason
    with pytest.raises(SdpError) as raised:
        answer(parse_sdp(offer("RTP/SAVP")), "10.0.0.2", 5000)
    assert "no SRTP crypto suite in common: offered none" in raised.value.reason


def test_our_sdes_offer_and_the_answer_we_accept():
    ours = make_offer("10.0.0.2", 5000, srtp=True)
    assert [(tag, suite) for tag, suite, _ in ours.audio.crypto] == [
        (1, "AES_CM_128_HMAC_SHA1_80"),
        (2, "AES_CM_128_HMAC_SHA1_32"),
    ]
    reply, _ = answer(parse_sdp(str(ours)), "10.0.0.1", 4000)
    negotiated = accept_answer(ours, reply)
    assert negotiated.srtp.suite == "AES_CM_128_HMAC_SHA1_80"
    assert negotiated.srtp.local == ours.audio.crypto[0][2]
    with pytest.raises(SdpError, match="none of the SRTP crypto suites"):
        accept_answer(ours, parse_sdp(offer("RTP/AVP")))


def test_sipp_offers_that_cannot_be_met_get_488(sip_server):
    server = sip_server(listening(Heard()), srtp="required")
    status, log = sipp(server, "srtp_refused.xml")
    assert status == 0, log
    assert server.runtime.calls == []
