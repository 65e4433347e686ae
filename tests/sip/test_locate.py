"""Trunks found by DNS (RFC 3263): NAPTR, then SRV, then the host's address, against a DNS
server on loopback that answers from a zone written in the test (dnspython's message
API); the agent then calls a SIPp phone found that way."""

from __future__ import annotations

import asyncio
import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from helpers import wait_until
from sip_helpers import Heard, finished, free_port, listening, registrar

from flowcat_ft.sip.message import Uri
from flowcat_ft.transports.sip import Trunk
from flowcat_ft.transports.sip.locate import Locator


class Zone:
    """A DNS server on a loopback UDP port: answers what ``records`` holds ((name, type):
    list of record texts), NXDOMAIN for other names; counts the questions."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records
        self.questions: list[tuple[str, str]] = []
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, client = self.socket.recvfrom(4096)
            except OSError:
                return  # closed
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True)
            kind = dns.rdatatype.to_text(question.rdtype)
            self.questions.append((name, kind))
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            texts = self.records.get((name, kind))
            if texts:
                reply.answer.append(dns.rrset.from_text_list(name + ".", 60, "IN", kind, texts))
            elif not any(known == name for known, _ in self.records):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.socket.sendto(reply.to_wire(), client)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def zone():
    started: list[Zone] = []

    def start(records: dict[tuple[str, str], list[str]]) -> Zone:
        started.append(server := Zone(records))
        return server

    yield start
    for server in started:
        server.close()


def locate(zone: Zone, uri: str, transports=("UDP", "TCP", "TLS")):
    return asyncio.run(Locator(transports, (zone.address,)).locate(Uri.parse(uri)))


def test_naptr_then_srv_in_priority_order(zone):
    dns_zone = zone(
        {
            ("trunk.test", "NAPTR"): [
                '20 10 "s" "SIP+D2U" "" _sip._udp.trunk.test.',
                '10 10 "s" "SIP+D2T" "" _sip._tcp.trunk.test.',
                '5 10 "s" "SIPS+D2T" "" _sips._tcp.trunk.test.',
            ],
            ("_sip._tcp.trunk.test", "SRV"): [
                "20 0 5070 sbc2.trunk.test.",
                "10 0 5080 sbc1.trunk.test.",
            ],
            ("_sip._udp.trunk.test", "SRV"): ["10 0 5060 sbc1.trunk.test."],
            ("sbc1.trunk.test", "A"): ["127.0.0.11"],
            ("sbc2.trunk.test", "A"): ["127.0.0.12"],
        }
    )
    # TLS is first in the NAPTR order, but we do not listen on TLS: TCP is next.
    assert locate(dns_zone, "sip:+15551234@trunk.test", ("UDP", "TCP")) == [
        ("TCP", "127.0.0.11", 5080),
        ("TCP", "127.0.0.12", 5070),
    ]
    # A transport named in the URI skips NAPTR; a port skips SRV too.
    assert locate(dns_zone, "sip:trunk.test;transport=udp") == [("UDP", "127.0.0.11", 5060)]
    assert locate(dns_zone, "sip:sbc2.trunk.test:5099") == [("UDP", "127.0.0.12", 5099)]


def test_without_naptr_each_transports_srv_then_the_address(zone):
    dns_zone = zone(
        {
            ("pbx.test", "A"): ["127.0.0.21"],
            ("_sip._tcp.pbx.test", "SRV"): ["10 0 5062 pbx.test."],
            ("_sips._tcp.pbx.test", "SRV"): ["10 0 5063 pbx.test."],
            ("plain.test", "A"): ["127.0.0.22"],
        }
    )
    assert locate(dns_zone, "sip:pbx.test") == [("TCP", "127.0.0.21", 5062)]  # no UDP SRV
    assert locate(dns_zone, "sips:pbx.test") == [("TLS", "127.0.0.21", 5063)]
    assert locate(dns_zone, "sip:plain.test") == [("UDP", "127.0.0.22", 5060)]
    assert ("_sip._udp.plain.test", "SRV") in dns_zone.questions
    with pytest.raises(OSError, match=r"cannot look up nowhere\.test"):
        locate(dns_zone, "sip:nowhere.test")


def test_the_agent_calls_a_phone_its_trunks_dns_points_at(sip_server, phone, zone):
    uri, process = phone("answer.xml")
    port = Uri.parse(uri).port
    dns_zone = zone(
        {
            ("trunk.test", "NAPTR"): ['10 10 "s" "SIP+D2U" "" _sip._udp.trunk.test.'],
            ("_sip._udp.trunk.test", "SRV"): [f"10 0 {port} sbc.trunk.test."],
            ("sbc.trunk.test", "A"): ["127.0.0.1"],
        }
    )
    server = sip_server(listening(Heard()), nameservers=(dns_zone.address,))
    call = server.dial("sip:+15551234@trunk.test").result(15)
    assert (call.peer.transport, call.peer.host, call.peer.port) == ("UDP", "127.0.0.1", port)
    server.hang_up(call.call_id)
    finished(process)


def test_the_next_srv_target_is_tried_when_the_first_cannot_be_reached(sip_server, phone, zone):
    dead = free_port(socket.SOCK_STREAM)  # nothing listens: the connection is refused
    uri, process = phone("answer.xml", "t1")
    port = Uri.parse(uri).port
    dns_zone = zone(
        {
            ("_sip._tcp.trunk.test", "SRV"): [
                f"10 0 {dead} sbc1.trunk.test.",
                f"20 0 {port} sbc2.trunk.test.",
            ],
            ("sbc1.trunk.test", "A"): ["127.0.0.1"],
            ("sbc2.trunk.test", "A"): ["127.0.0.1"],
        }
    )
    server = sip_server(listening(Heard()), nameservers=(dns_zone.address,))
    call = server.dial("sip:+15551234@trunk.test;transport=tcp").result(15)
    assert (call.peer.transport, call.peer.port) == ("TCP", port)
    assert server.ended[-1].end_reason.startswith("503 cannot connect")  # the first try
    server.hang_up(call.call_id)
    finished(process)


def test_a_registrar_that_cannot_be_reached_is_passed_over(sip_server, zone):
    dead, port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    sipp = registrar("registrar_hour.xml", port, "t1")
    try:
        dns_zone = zone(
            {
                ("_sip._tcp.pbx.test", "SRV"): [
                    f"10 0 {dead} pbx1.pbx.test.",
                    f"20 0 {port} pbx2.pbx.test.",
                ],
                ("pbx1.pbx.test", "A"): ["127.0.0.1"],
                ("pbx2.pbx.test", "A"): ["127.0.0.1"],
            }
        )
        trunk = Trunk(registrar="sip:pbx.test;transport=tcp", user="agent")
        server = sip_server(listening(Heard()), trunks=(trunk,), nameservers=(dns_zone.address,))
        (registration,) = server.registrations
        assert wait_until(lambda: registration.state == "registered", 10)
        server.stop(grace=0)  # the un-REGISTER goes to the registrar that took it
        assert sipp.wait(15) == 0, sipp.stderr.read().decode()
    finally:
        sipp.kill()
        sipp.wait()
