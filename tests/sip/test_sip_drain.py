"""A draining SIP server, against SIPp: new calls and OPTIONS pings get 503 with
Retry-After (so a trunk fails over and takes the server out of rotation), while a live call
goes on: its session refresh, OPTIONS and BYE are answered; once it has ended, the trunk's
binding is removed."""

from __future__ import annotations

import pytest
from helpers import wait_until
from sip_helpers import Heard, free_port, listening, live_call, registrar, sipp

from flowcat_ft.transports.sip import CallFailed, Trunk


def test_draining_refuses_new_calls_and_pings_while_the_live_call_goes_on(sip_server):
    heard = Heard()
    port = free_port()
    trunk_registrar = registrar("registrar_hour.xml", port)
    try:
        trunk = Trunk(registrar=f"sip:127.0.0.1:{port}", user="agent")
        server = sip_server(listening(heard), trunks=(trunk,))
        (registration,) = server.registrations
        assert wait_until(lambda: registration.state == "registered", 10)
        with live_call(server) as live:
            assert wait_until(lambda: heard.frames > 10, 20)  # RTP flows both ways
            (call,) = server.calls
            assert wait_until(lambda: call.state == "confirmed")  # SIPp waits for its command

            server.drain()
            status, log = sipp(server, "draining.xml")
            assert status == 0, log  # 503 with Retry-After to OPTIONS and to the INVITE
            assert server.refused == 1
            assert registration.state == "registered"  # the live call keeps the binding
            frames = heard.frames
            assert wait_until(lambda: heard.frames > frames + 10)  # and its audio flows

            live.go_on()  # a session refresh, OPTIONS and BYE, each answered 200
            live.finished()
        assert call.end_reason == "the caller hung up"
        assert server.wait_for_calls(10)
        # The last call has ended: the binding is removed.
        assert wait_until(lambda: registration.state == "unregistered", 10)
        assert trunk_registrar.wait(15) == 0, trunk_registrar.stderr.read().decode()
        assert wait_until(lambda: server.runtime.pool.in_use == 0)
    finally:
        trunk_registrar.kill()
        trunk_registrar.wait()


def test_a_call_placed_while_draining_fails_with_503(sip_server, phone):
    server = sip_server(listening(Heard()))
    server.drain()
    uri, _ = phone("answer.xml")
    with pytest.raises(CallFailed) as failed:
        server.dial(uri).result(10)
    assert (failed.value.status, failed.value.reason) == (503, "the server is draining")
