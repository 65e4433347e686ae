"""SIP over UDP read as RTP is: a wake-up of the socket takes a whole burst of requests (up
to the bound), and garbage in the middle of it stops none of the rest."""

from __future__ import annotations

import socket
import threading

from sip_helpers import Heard, listening

from flowcat_ft.sip.message import Headers, Request, Uri, parse
from flowcat_ft.transports.sip.endpoint import MAX_READS


def options(server, port: int, n: int) -> bytes:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKburst{n};rport")
    headers.add("From", f"<sip:pinger@127.0.0.1:{port}>;tag=p{n}")
    headers.add("To", "<sip:agent@127.0.0.1>")
    headers.add("Call-ID", f"burst-{port}-{n}")
    headers.add("CSeq", "1 OPTIONS")
    headers.add("Max-Forwards", "70")
    return bytes(Request("OPTIONS", Uri.parse(f"sip:agent@127.0.0.1:{server.port}"), headers))


def test_a_burst_is_read_in_one_wake_up_up_to_the_bound_and_all_of_it_answered(sip_server):
    server = sip_server(listening(Heard()))
    endpoint, loop = server.endpoint, server.endpoint.loop
    count = MAX_READS + 4
    handled_in_one_pass: list[int] = []
    held, go = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        held.set()
        go.wait()
        # A timer due now runs in the loop's next pass right after the readers it found
        # ready: it sees what one wake-up of the SIP socket handled.
        loop.call_later(0, lambda: handled_in_one_pass.append(handled()))

    def handled() -> int:
        return endpoint.counts["requests"] + endpoint.counts["bad"]

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pinger:
        pinger.bind(("127.0.0.1", 0))
        pinger.settimeout(5)
        port = pinger.getsockname()[1]
        loop.call_soon_threadsafe(hold_the_loop)
        assert held.wait(5)
        for n in range(count):
            if n == 5:
                pinger.sendto(b"NOT SIP AT ALL\r\n\r\n", ("127.0.0.1", server.port))
            pinger.sendto(options(server, port, n), ("127.0.0.1", server.port))
        go.set()
        responses = [parse(pinger.recv(65536)) for _ in range(count)]
    assert {r.status for r in responses} == {200}
    assert sorted(r.call_id for r in responses) == sorted(f"burst-{port}-{n}" for n in range(count))
    assert handled_in_one_pass == [MAX_READS]
    assert endpoint.counts["bad"] == 1
