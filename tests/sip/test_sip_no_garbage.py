"""SIP calls leave nothing for the garbage collector once their transactions are over.

The server runs with automatic collection off (:mod:`flowcat_ft.gcpolicy`), so whatever a
SIP call leaves in a reference cycle (its dialog, RTP session, sockets, processors and
transactions) stays until the runtime collects, and each collection grows with it: before
this was fixed, every INVITE transaction and a dialog with its RTP session in two calls of
five were left to the collector, and after a few thousand calls its pauses reached
hundreds of milliseconds. Here calls end every usual way over TCP (no retransmissions, so
the transactions are over as soon as they are answered) on a runtime that never collects;
then one collection, saving what it finds, finds no cycle through the project's objects.
"""

from __future__ import annotations

import time

from helpers import cycles_of_ours, never_collecting_policy, wait_until
from sip_helpers import Heard, finished, listening, sipp

from flowcat_ft.transports.sip import CallFailed, SipServer


def dial_when_listening(server: SipServer, uri: str):
    """Dial ``uri`` once SIPp, just started, accepts TCP connections."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return server.dial(uri).result(15)
        except CallFailed as failed:
            if failed.status != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def call_out_and_hang_up(server: SipServer, phone) -> None:
    """The agent calls SIPp, hears its echo, and hangs up (and lets go of the call)."""
    uri, process = phone("answer.xml", "t1")
    call = dial_when_listening(server, uri + ";transport=tcp")
    assert wait_until(lambda: call.media.packets_in > 5)
    server.hang_up(call.call_id)
    finished(process)


def test_sip_calls_that_end_every_way_leave_no_cycle(sip_server, phone):
    server = sip_server(listening(Heard()), gc_policy=never_collecting_policy(), ring_secs=0.5)
    for scenario in ("call.xml", "cancel.xml", "call.xml"):  # hold, DTMF, caller's BYE
        status, log = sipp(server, scenario, transport="t1")
        assert status == 0, log
    call_out_and_hang_up(server, phone)

    assert wait_until(lambda: not server.calls and server.endpoint.transactions == 0, 10)
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
    ends = [c.end_reason for c in server.ended]  # tries before SIPp listened among them
    assert ends[:3] == ["the caller hung up", "the caller cancelled", "the caller hung up"]
    assert ends[-1] == "hung up by the application"
    assert cycles_of_ours() == []
