"""Early media (183 Session Progress with SDP) both ways, against SIPp: the agent's audio
flows and the caller is heard before the answer; a carrier's announcement before a
failure is heard by the agent."""

from __future__ import annotations

import pytest
from helpers import wait_until
from sip_helpers import Heard, finished, listening, sipp

from flowcat_ft.transports.sip import CallFailed


def test_early_media_then_the_answer(sip_server):
    heard = Heard()
    server = sip_server(listening(heard), early_media_secs=1.0)
    status, log = sipp(server, "early.xml")  # 183 with SDP, then a 200 with the same
    assert status == 0, log
    assert wait_until(lambda: server.ended)
    call = server.ended[-1]
    assert call.end_reason == "the caller hung up"
    assert call.media.negotiated.codec.name == "PCMA"
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_the_caller_is_heard_and_answered_during_early_media(sip_server):
    heard = Heard()
    server = sip_server(listening(heard), early_media_secs=60)
    # SIPp sends speech after the 183, then CANCELs: nothing was ever answered.
    status, log = sipp(server, "early_cancel.xml")
    assert status == 0, log
    assert wait_until(lambda: server.ended)
    call = server.ended[-1]
    assert call.end_reason == "the caller cancelled"
    assert heard.loud > 20  # the caller's speech reached the agent before any answer
    assert call.media.packets_out > 20  # and the agent's audio went out as early media
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
    assert wait_until(lambda: server.runtime.calls == [])  # after its slabs came back


def test_a_carriers_announcement_is_heard_before_the_call_fails(sip_server, phone):
    heard = Heard()
    server = sip_server(listening(heard))
    uri, process = phone("announcement.xml")  # 183 with SDP, speech, then 486
    with pytest.raises(CallFailed) as raised:
        server.dial(uri).result(20)
    assert raised.value.status == 486
    finished(process)
    assert heard.loud > 20  # the announcement reached the agent
    assert server.ended[-1].media.negotiated.codec.name == "PCMA"
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
    assert wait_until(lambda: server.runtime.calls == [])  # after its slabs came back
