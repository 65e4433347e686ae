"""Calls the agent places, and transfers: SIPp as the phone (or trunk) that is called."""

from __future__ import annotations

import pytest
from helpers import wait_until
from sip_helpers import Heard, finished, listening

from flowcat_ft.transports.sip import CallFailed


def test_the_agent_calls_a_phone_hears_it_and_hangs_up(sip_server, phone):
    server = sip_server(listening(Heard()))
    uri, process = phone("answer.xml")
    call = server.dial(uri).result(15)
    assert call.state == "confirmed" and call.media.negotiated.codec.name == "PCMU"
    assert wait_until(lambda: call.media.packets_in > 20)  # our RTP, echoed by the phone
    server.hang_up(call.call_id)
    finished(process)
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_the_agent_offers_opus_and_a_phone_that_takes_it_echoes_it(sip_server, phone):
    heard = Heard()
    server = sip_server(listening(heard), codecs=("OPUS", "PCMU", "PCMA"))
    uri, process = phone("answer_opus.xml")  # it checks our offer lists Opus first
    call = server.dial(uri).result(15)
    assert (call.media.negotiated.codec.name, call.media.negotiated.payload_type) == ("opus", 111)
    assert call.media.negotiated.dtmf_payload_type == 102
    assert wait_until(lambda: call.media.packets_in > 20)  # our Opus, echoed by the phone
    assert wait_until(lambda: heard.frames > 20) and call.media.ignored == 0  # decoded
    server.hang_up(call.call_id)
    finished(process)
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_a_busy_phone_is_a_failure_with_its_status(sip_server, phone):
    server = sip_server(listening(Heard()))
    uri, process = phone("busy.xml")
    with pytest.raises(CallFailed) as raised:
        server.dial(uri).result(15)
    assert raised.value.status == 486
    finished(process)
    assert server.runtime.calls == []


def test_a_trunk_that_challenges_the_invite(sip_server, phone):
    server = sip_server(listening(Heard()))
    uri, process = phone("challenge.xml")
    call = server.dial(uri, credentials=("agent", "secret")).result(15)
    assert call.state == "confirmed"
    server.hang_up(call.call_id)
    finished(process)


def test_a_transfer_with_refer(sip_server, phone):
    server = sip_server(listening(Heard()))
    uri, process = phone("transfer.xml")
    call = server.dial(uri).result(15)
    assert server.transfer(call.call_id, "sip:human@example.com").result(15) is True
    finished(process)  # it got the REFER, reported the transfer, and our BYE
    assert call.end_reason == "transferred to sip:human@example.com"
