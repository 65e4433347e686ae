"""SIP messages: parsing (strict, with reasons), serializing, and TCP framing."""

from __future__ import annotations

import pytest

from flowcat_ft.sip.message import (
    NameAddr,
    Request,
    Response,
    SipError,
    StreamParser,
    Uri,
    Via,
    parse,
)

INVITE = (
    b"INVITE sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1;rport\r\n"
    b"v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-0;received=10.0.0.9\r\n"
    b'f: "Alice" <sip:alice@10.0.0.1:5070>;tag=a1\r\n'
    b"t: <sip:agent@127.0.0.1>\r\n"
    b"i: call-1@10.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"m: <sip:alice@10.0.0.1:5070;transport=udp>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>,\r\n"
    b"  <sip:p2.example.com;lr>\r\n"
    b"Supported: timer, replaces\r\n"
    b"Max-Forwards: 70\r\n"
    b"c: application/sdp\r\n"
    b"l: 4\r\n"
    b"\r\n"
    b"v=0\r\nthis is past Content-Length"
)


def test_a_request_with_compact_forms_folding_and_lists():
    request = parse(INVITE)
    assert isinstance(request, Request)
    assert request.method == "INVITE"
    assert request.uri == Uri("sip", "agent", "127.0.0.1", 5060)
    vias = request.vias
    assert [v.branch for v in vias] == ["z9hG4bK-1", "z9hG4bK-0"]
    assert vias[0].params["rport"] is None and vias[0].port == 5070
    assert request.from_.tag == "a1" and request.from_.display == "Alice"
    assert request.to.tag is None
    assert request.call_id == "call-1@10.0.0.1"
    assert (request.cseq.number, request.cseq.method) == (1, "INVITE")
    assert request.contact.uri.transport == "udp"
    assert [NameAddr.parse(v).uri.host for v in request.headers.values("Record-Route")] == [
        "p1.example.com",
        "p2.example.com",
    ]
    assert request.options("Supported") == {"timer", "replaces"}
    assert request.content_type == "application/sdp"
    assert request.body == b"v=0\r"  # cut to Content-Length on UDP


def test_a_response_copies_what_rfc_3261_says_and_serializes_with_its_length():
    request = parse(INVITE)
    response = request.response(180, to_tag="b2", body=b"")
    again = parse(bytes(response))
    assert isinstance(again, Response)
    assert (again.status, again.reason) == (180, "Ringing")
    assert [v.branch for v in again.vias] == ["z9hG4bK-1", "z9hG4bK-0"]
    assert again.to.tag == "b2" and again.from_.tag == "a1"
    assert again.call_id == request.call_id and str(again.cseq) == "1 INVITE"
    assert again.headers.get("Content-Length") == "0"
    assert request.response(100, to_tag="b2").to.tag is None  # 100 carries no tag


@pytest.mark.parametrize(
    ("data", "reason", "answerable"),
    [
        (INVITE.replace(b"i: call-1@10.0.0.1\r\n", b""), "missing header: Call-ID", True),
        (INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), "does not match", True),
        (INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), "bad CSeq", True),
        (INVITE.replace(b"l: 4", b"l: 400"), "Content-Length 400 is more than", True),
        (INVITE.replace(b"l: 4", b"l: four"), "bad Content-Length", True),
        (INVITE.replace(b";branch=z9hG4bK-1", b""), "top Via has no branch", False),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards"), "not a header", False),
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), "not a SIP request", False),
        (INVITE.replace(b"Via: SIP/2.0/UDP 10.0.0.1:5070", b"Via: nonsense"), "bad Via", False),
        (INVITE.replace(b"<sip:agent@127.0.0.1>", b"<sip:agent@127.0.0.1"), "no closing", True),
        (INVITE[:60], "cut short", False),
        (b"\xff\xfe garbage \r\n\r\n", "not UTF-8", False),
        (b"\r\n\r\n", "not a SIP request", False),
    ],
)
def test_garbage_is_named(data, reason, answerable):
    with pytest.raises(SipError) as raised:
        parse(data)
    assert reason in raised.value.reason
    assert (raised.value.request is not None) == answerable


def test_uris_and_vias_round_trip():
    uri = Uri.parse("sips:+15551234@[2001:db8::1]:5061;transport=tcp;lr?subject=x")
    assert (uri.host, uri.port, uri.transport) == ("2001:db8::1", 5061, "tcp")
    assert Uri.parse(str(uri)) == uri
    assert Uri.parse("tel:+15551234").host == "+15551234"
    via = Via.parse("SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKx;received=1.2.3.4")
    assert Via.parse(str(via)) == via
    for bad in ("sip:", "sip:host:99999", "sip:ho st", "nocolon"):
        with pytest.raises(SipError):
            Uri.parse(bad)


def test_tcp_framing_by_content_length_with_keepalives_and_split_reads():
    parser = StreamParser()
    one = bytes(parse(INVITE))
    stream = b"\r\n\r\n" + one + one
    out = []
    for i in range(0, len(stream), 7):  # arrives in small pieces
        out += parser.feed(stream[i : i + 7])
    assert [m.method for m in out] == ["INVITE", "INVITE"]
    assert out[0].body == b"v=0\r"
    assert parser.pings == 1
    # Content-Length anywhere among the headers (ours writes it last; others do not).
    first = one.replace(b"Via:", b"Content-Length: 4\r\nVia:", 1).replace(
        b"\r\nContent-Length: 4\r\n\r\n", b"\r\n\r\n"
    )
    assert [m.body for m in StreamParser().feed(first)] == [b"v=0\r"]
    # One bad message among good ones is reported, not fatal.
    bad = one.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    kinds = [type(m).__name__ for m in parser.feed(one + bad + one)]
    assert kinds == ["Request", "SipError", "Request"]
    with pytest.raises(SipError, match="without a Content-Length"):
        StreamParser().feed(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n")
