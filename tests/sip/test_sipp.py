"""Calls from SIPp (Debian's sip-tester), a real SIP peer: its scenarios are in scenarios/."""

from __future__ import annotations

import subprocess

from helpers import wait_until
from sip_helpers import Heard, listening, sipp, sipp_command


def test_a_call_with_speech_dtmf_a_session_refresh_and_hold(sip_server):
    heard = Heard()
    server = sip_server(listening(heard))
    status, log = sipp(server, "call.xml")
    assert status == 0, log
    assert wait_until(lambda: server.ended, 5)
    call = server.ended[-1]
    assert call.end_reason == "the caller hung up"
    media = call.media
    assert heard.loud > 20  # the speech in g711a.pcap reached the agent
    assert heard.digits == ["1"]  # RFC 4733, once, however many packets carried it
    assert media.dtmf_out == 1  # the agent's answering key went back as RFC 4733
    assert media.packets_in > 50 and media.packets_out > 50
    assert media.negotiated.codec.name == "PCMA" and media.negotiated.on_hold  # re-INVITE
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_cancel_while_ringing_is_487(sip_server):
    server = sip_server(listening(Heard()), ring_secs=5)
    status, log = sipp(server, "cancel.xml")
    assert status == 0, log
    assert wait_until(
        lambda: server.ended and server.ended[-1].end_reason == "the caller cancelled"
    )
    assert server.runtime.calls == []


def test_the_agent_hangs_up_with_a_bye(sip_server):
    server = sip_server(listening(Heard(hang_up_after=25)))
    status, log = sipp(server, "hangup.xml")
    assert status == 0, log
    assert server.ended[-1].end_reason == "the agent ended the call"
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_a_full_server_answers_503_and_the_call_in_progress_goes_on(sip_server):
    heard = Heard()
    server = sip_server(listening(heard), max_calls=1)
    command, _ = sipp_command(server, "hangup.xml")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: heard.frames > 10, 10)
        status, log = sipp(server, "full.xml")
        assert status == 0, log
        assert server.refused == 1
        frames = heard.frames
        assert wait_until(lambda: heard.frames > frames + 10)  # the first call goes on
        server.stop(grace=0)  # hangs it up: SIPp's BYE is answered
        assert first.wait(10) == 0
    finally:
        first.kill()
    assert server.ended[-1].end_reason == "the server is shutting down"


def test_garbage_gets_a_400_that_names_the_problem_and_other_calls_go_on(sip_server):
    heard = Heard(hang_up_after=150)  # three seconds, then the agent hangs up
    server = sip_server(listening(heard))
    command, _ = sipp_command(server, "hangup.xml")
    other = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: heard.frames > 10, 10)
        status, log = sipp(server, "garbage.xml")
        assert status == 0, log
        assert server.endpoint.counts["bad"] == 2
        assert other.wait(15) == 0  # the call in progress ended as it should, with our BYE
    finally:
        other.kill()
    assert server.ended[-1].end_reason == "the agent ended the call"
