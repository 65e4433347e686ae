"""Opus on SIP calls (RFC 7587): the SDP offer/answer, then a caller written here that
speaks Opus over RTP to the real server and hears the agent's echo and its DTMF."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from helpers import wait_until
from sip_helpers import Heard, listening
from test_rtp_faults import Caller

from flowcat_ft.audio.jitter import JitterBuffer
from flowcat_ft.audio.opus import OpusDecoder, OpusEncoder
from flowcat_ft.sip.message import Request, Uri
from flowcat_ft.sip.rtp import DtmfReceiver, dtmf_packets, parse_rtp, rtp_packet
from flowcat_ft.sip.sdp import SdpError, accept_answer, answer, make_offer, parse_sdp
from flowcat_ft.transports.sip.codecs import opus_packet_ms

BROWSER_LIKE_OFFER = """v=0\r
o=- 1 1 IN IP4 10.0.0.1\r
s=-\r
c=IN IP4 10.0.0.1\r
t=0 0\r
m=audio 4000 RTP/AVP 0 8 109 101 110\r
a=rtpmap:109 opus/48000/2\r
a=fmtp:109 useinbandfec=1; minptime=10; maxplaybackrate=16000; sprop-stereo=0\r
a=rtpmap:101 telephone-event/8000\r
a=rtpmap:110 telephone-event/48000\r
a=fmtp:110 0-16\r
"""

WITH_OPUS = ("OPUS", "PCMU", "PCMA")


def test_opus_is_taken_over_g711_with_the_offers_payload_type_and_48k_events():
    description, negotiated = answer(parse_sdp(BROWSER_LIKE_OFFER), "h", 1, codecs=WITH_OPUS)
    assert (negotiated.codec.name, negotiated.payload_type) == ("opus", 109)
    assert negotiated.dtmf_payload_type == 110  # RFC 4733: the events' clock is Opus's
    text = str(description)
    assert "m=audio 1 RTP/AVP 109 110\r\n" in text
    assert "a=rtpmap:109 opus/48000/2\r\n" in text
    assert "a=fmtp:109 minptime=10;useinbandfec=0;stereo=0;sprop-stereo=0\r\n" in text
    assert "a=rtpmap:110 telephone-event/48000\r\n" in text
    audio = parse_sdp(text).audio
    assert audio.channels == {109: 2} and audio.ptime == 20


def test_without_opus_configured_the_answer_is_g711_as_before():
    description, negotiated = answer(parse_sdp(BROWSER_LIKE_OFFER), "h", 1)
    assert (negotiated.codec.name, negotiated.payload_type, negotiated.dtmf_payload_type) == (
        "PCMU",
        0,
        101,
    )
    assert parse_sdp(str(description)).audio.formats == [0, 101]
    only_opus = BROWSER_LIKE_OFFER.replace("RTP/AVP 0 8 109 101 110", "RTP/AVP 109 110")
    with pytest.raises(SdpError) as refused:
        answer(parse_sdp(only_opus), "h", 1)
    assert refused.value.status == 488 and "OPUS/48000" in refused.value.reason
    # Opus offered with 8 kHz events only (baresip does): those are taken.
    no_wideband_events = only_opus.replace("RTP/AVP 109 110", "RTP/AVP 109 101")
    description, negotiated = answer(parse_sdp(no_wideband_events), "h", 1, codecs=WITH_OPUS)
    assert negotiated.codec.name == "opus" and negotiated.dtmf_payload_type == 101
    assert "a=rtpmap:101 telephone-event/8000\r\n" in str(description)


def test_our_offer_with_opus_and_the_peers_answers():
    offer = make_offer("10.0.0.2", 5000, codecs=WITH_OPUS)
    text = str(offer)
    assert "m=audio 5000 RTP/AVP 111 0 8 101 102\r\n" in text
    assert "a=rtpmap:111 opus/48000/2\r\n" in text
    assert "a=rtpmap:102 telephone-event/48000\r\n" in text
    opus = text.replace("RTP/AVP 111 0 8 101 102", "RTP/AVP 111 102")
    negotiated = accept_answer(offer, parse_sdp(opus))
    assert (negotiated.codec.name, negotiated.payload_type) == ("opus", 111)
    assert negotiated.dtmf_payload_type == 102
    g711 = text.replace("RTP/AVP 111 0 8 101 102", "RTP/AVP 8 101")
    negotiated = accept_answer(offer, parse_sdp(g711))
    assert (negotiated.codec.name, negotiated.dtmf_payload_type) == ("PCMA", 101)
    assert "RTP/AVP 0 8 101\r\n" in str(make_offer("h", 1))  # G.711 offers as before


def test_opus_packet_durations_and_an_opaque_jitter_buffer():
    encoder = OpusEncoder(16000)
    packet = encoder.encode(np.zeros(320, np.int16))
    assert opus_packet_ms(packet) == 20
    assert opus_packet_ms(bytes([0b00011_000])) == 60  # SILK 60 ms, one frame
    assert opus_packet_ms(bytes([0b11111_011, 3])) == 60  # CELT 20 ms, three frames
    assert opus_packet_ms(b"") is None
    jitter = JitterBuffer(48000, 20, 20, 80, codec=None)
    jitter.put(1, 0, packet, 0.0)
    jitter.put(3, 1920, packet, 0.04)
    played = [jitter.get(0.02 * i).payload for i in range(1, 5)]
    assert played[:3] == [packet, b"", packet]  # the lost one: empty, for the decoder


def tone(step: int) -> np.ndarray:
    """20 ms of a loud 440 Hz tone at 48 kHz, the ``step``-th."""
    t = np.arange(960 * step, 960 * (step + 1)) / 48000
    return (np.sin(2 * np.pi * 440 * t) * 12000).astype(np.int16)


def test_a_caller_speaking_opus_hears_the_echo_and_dtmf_both_ways(sip_server):
    heard = Heard()
    server = sip_server(listening(heard), codecs=WITH_OPUS)
    caller = Caller(server)
    caller.call(codecs=("OPUS",))
    encoder, decoder = OpusEncoder(48000), OpusDecoder(16000)
    pcm = np.empty(16000 * 120 // 1000, np.int16)
    echoed, timestamps, events = [], [], []

    def receive(until: float) -> None:
        while time.monotonic() < until:
            try:
                packet = parse_rtp(caller.rtp.recv(2048))
            except TimeoutError:
                continue
            if packet.payload_type == 111:
                timestamps.append(packet.timestamp)
                echoed.append(pcm[: decoder.decode(packet.payload, pcm)].copy())
            elif packet.payload_type == 102:
                events.append(packet.payload)

    for step in range(100):  # two seconds of tone, then silence
        payload = encoder.encode(tone(step) if step < 50 else np.zeros(960, np.int16))
        caller.rtp.sendto(rtp_packet(111, 7 + step, 960 * step, 99, payload), caller.remote)
        receive(time.monotonic() + 0.02)
    for seq, (payload, first) in enumerate(dtmf_packets("5", clock_rate=48000)):
        packet = rtp_packet(102, 200 + seq, 960 * 100, 99, payload, marker=first)
        caller.rtp.sendto(packet, caller.remote)
    assert wait_until(lambda: heard.digits == ["5"])
    receive(time.monotonic() + 1.0)
    assert heard.loud > 20  # the tone reached the agent, decoded
    loudness = [np.sqrt(np.mean(frame.astype(float) ** 2)) for frame in echoed]
    assert sum(level > 3000 for level in loudness) > 20  # and came back, Opus-encoded
    assert all(len(frame) == 320 for frame in echoed)  # 20 ms a packet, at 16 kHz here
    steps = {(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(timestamps)}
    assert 960 in steps and all(step % 960 == 0 for step in steps)
    receiver = DtmfReceiver()
    assert [d for e in events if (d := receiver.packet(0, e))] == ["5"]  # the agent's "5"
    assert int.from_bytes(events[0][2:4]) == 960  # its duration at Opus's 48 kHz clock
    bye = Request("BYE", Uri.parse(f"sip:agent@127.0.0.1:{server.port}"))
    bye.headers = caller.headers("BYE", 2, caller.to_tag)
    caller.send(bye)
    assert caller.receive().status == 200
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
