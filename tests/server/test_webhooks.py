"""Carrier webhook answers, and a Twilio-protocol call placed through one."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import pytest
import websockets
from carrier_messages import payloads, receive_until, twilio_media, twilio_start
from websockets.datastructures import Headers

from flowcat_ft.agents.echo import Echo
from flowcat_ft.frames import StartFrame
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.server.carrierauth import merge, twilio_guards
from flowcat_ft.server.signatures import twilio_signature
from flowcat_ft.server.streamtokens import StreamTokens
from flowcat_ft.server.webhooks import answer_pages, stream_url
from flowcat_ft.transports.clients import TrustedProxies
from flowcat_ft.transports.http import HttpRequest
from flowcat_ft.transports.server import CARRIERS

FORM = {"CallSid": "CA9", "From": "+15550001111", "To": "+15550002222"}


def webhook(
    method: str = "POST", form=FORM, host: str = "agent.test:8765", secure: bool = False
) -> HttpRequest:
    """A carrier's webhook, which asked for ``host`` (over TLS if ``secure``), as the
    server resolves them (behind a trusted proxy: from its ``X-Forwarded-*``)."""
    body = urllib.parse.urlencode(form).encode() if method == "POST" else b""
    query = dict(form) if method == "GET" else {}
    headers = Headers(Host="agent.test:8765")
    return HttpRequest(method, "/x/answer", query, headers, body, secure=secure, host=host)


TOKENS = StreamTokens()


def answer(carrier: str, request: HttpRequest, public_url: str | None = None):
    return answer_pages([carrier], TOKENS, public_url)[f"/{carrier}/answer"](request)


def stream_token(url: str, carrier: str, call_id: str) -> str:
    """The stream URL without its token, once the token is checked to be the call's."""
    base, _, token = url.rpartition("/")
    assert TOKENS.check(carrier, token).call_id == call_id
    return base


def test_every_carrier_but_raw_has_an_answer():
    assert sorted(answer_pages(CARRIERS, TOKENS)) == [
        f"/{name}/answer" for name in sorted(set(CARRIERS) - {"raw"})
    ]


def test_stream_url_follows_the_proxy_or_the_public_url():
    assert stream_url(webhook(), "/twilio") == "ws://agent.test:8765/twilio"
    proxied = webhook(host="abc.ngrok.app", secure=True)
    assert stream_url(proxied, "/twilio") == "wss://abc.ngrok.app/twilio"
    assert stream_url(webhook(), "/plivo", "https://voice.example.com") == (
        "wss://voice.example.com/plivo"
    )


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_twiml_connects_a_bidirectional_stream_with_the_callers_numbers(method):
    response = answer("twilio", webhook(method), "https://voice.example.com")
    assert response.content_type.startswith("application/xml")
    root = ET.fromstring(response.body)
    stream = root.find("./Connect/Stream")
    assert stream_token(stream.get("url"), "twilio", "CA9") == "wss://voice.example.com/twilio"
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert parameters == {"call_sid": "CA9", "from": "+15550001111", "to": "+15550002222"}


def test_answers_escape_what_the_caller_controls():
    form = {"CallSid": "CA1", "From": '"><Hangup/><x a="'}
    root = ET.fromstring(answer("twilio", webhook(form=form)).body)
    assert root.find(".//Hangup") is None
    assert root.find(".//Parameter[@name='from']").get("value") == form["From"]


def test_telnyx_plivo_vonage_and_exotel_answers():
    texml = ET.fromstring(answer("telnyx", webhook()).body)
    stream = texml.find("./Start/Stream")
    assert stream_token(stream.get("url"), "telnyx", "CA9") == "ws://agent.test:8765/telnyx"
    assert stream.get("bidirectionalMode") == "rtp"
    assert texml.find("./Pause") is not None  # keeps the call up while it streams

    plivo_form = {"CallUUID": "u1", "From": "15550001111", "To": "15550002222"}
    plivo = ET.fromstring(answer("plivo", webhook(form=plivo_form)).body).find("./Stream")
    assert stream_token(plivo.text, "plivo", "u1") == "ws://agent.test:8765/plivo"
    assert plivo.get("bidirectional") == "true"
    assert plivo.get("extraHeaders") == "call_uuid=u1,from=15550001111,to=15550002222"

    vonage_form = {"uuid": "v1", "from": "447700900000", "to": "447700900001"}
    ncco = json.loads(answer("vonage", webhook("GET", vonage_form)).body)
    endpoint = ncco[0]["endpoint"][0]
    assert ncco[0]["action"] == "connect"
    assert stream_token(endpoint["uri"], "vonage", "v1") == "ws://agent.test:8765/vonage"
    assert endpoint["content-type"] == "audio/l16;rate=16000"
    assert endpoint["headers"] == {"uuid": "v1", "from": "447700900000", "to": "447700900001"}

    exotel = json.loads(answer("exotel", webhook()).body)
    assert stream_token(exotel["url"], "exotel", "CA9") == "ws://agent.test:8765/exotel"


def test_vonage_may_post_its_webhook_as_json():
    body = json.dumps({"uuid": "v2", "from": "447700900000", "to": "447700900001"}).encode()
    headers = Headers(Host="agent.test", **{"Content-Type": "application/json"})
    request = HttpRequest("POST", "/vonage/answer", {}, headers, body, host="agent.test")
    endpoint = json.loads(answer("vonage", request).body)[0]["endpoint"][0]
    assert stream_token(endpoint["uri"], "vonage", "v2") == "ws://agent.test/vonage"
    assert endpoint["headers"] == {"uuid": "v2", "from": "447700900000", "to": "447700900001"}
    not_json = HttpRequest("POST", "/vonage/answer", {}, headers, b"[1, 2]")
    assert (answer("vonage", not_json).status, answer("vonage", not_json).body) == (
        400,
        "the body is not a JSON object\n",
    )


@pytest.mark.parametrize(
    ("carrier", "field"),
    [("twilio", "CallSid"), ("telnyx", "CallSid"), ("plivo", "CallUUID"), ("vonage", "uuid")],
)
def test_a_webhook_that_names_no_call_gets_no_stream(carrier, field):
    refused = answer(carrier, webhook(form={"From": "+15550001111"}))
    assert (refused.status, refused.body) == (400, f"the webhook names no call: no {field}\n")


class RecordStart(Echo):
    """The echo, remembering each call's start metadata."""

    starts: list[dict] = []

    def on_start(self, frame: StartFrame) -> None:
        self.starts.append(frame.metadata)


def test_a_twilio_call_placed_through_the_webhook(serve):
    """What Twilio does: post the webhook, follow the TwiML to the stream, stream audio."""
    RecordStart.starts = []
    server = serve(
        Pipeline([RecordStart]),
        pages=answer_pages(CARRIERS, TOKENS),
        guards=TOKENS.guards(["twilio"]),
        start_checks=TOKENS.start_checks(["twilio"]),
    )
    form = urllib.parse.urlencode(FORM).encode()
    url = f"http://127.0.0.1:{server.port}/twilio/answer"
    with urllib.request.urlopen(urllib.request.Request(url, form), timeout=5) as reply:
        twiml = ET.fromstring(reply.read())
    stream = twiml.find("./Connect/Stream")
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}

    audio = [bytes([n]) * 160 for n in range(10)]

    async def call() -> list:
        async with websockets.connect(stream.get("url")) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1"}))
            await ws.send(twilio_start(call=parameters["call_sid"], parameters=parameters))
            for n, frame in enumerate(audio):
                await ws.send(twilio_media(frame, n))
            return await receive_until(ws, lambda got: len(payloads(got)) >= 10, "the echo")

    assert payloads(asyncio.run(call())) == audio
    assert RecordStart.starts[0]["call_id"] == "CA9"
    assert RecordStart.starts[0]["parameters"]["from"] == "+15550001111"


@pytest.mark.parametrize(
    ("proxies", "expected"), [((), "ws://127.0.0.1"), (("127.0.0.1",), "wss://agent.example.com")]
)
def test_forwarded_host_and_scheme_are_believed_only_from_a_trusted_proxy(serve, proxies, expected):
    server = serve(pages=answer_pages(CARRIERS, TOKENS), proxies=TrustedProxies(proxies))
    headers = {"X-Forwarded-Host": "agent.example.com", "X-Forwarded-Proto": "https"}
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/twilio/answer", urllib.parse.urlencode(FORM).encode()
    )
    for name, value in headers.items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=5) as reply:
        url = ET.fromstring(reply.read()).find("./Connect/Stream").get("url")
    if not proxies:
        expected += f":{server.port}"
    assert stream_token(url, "twilio", "CA9") == f"{expected}/twilio"


def test_twilio_signatures_are_computed_as_twilio_documents():
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "GvWf1cFY/Q7PnoempGyD5oXAezc="


def test_only_signed_twilio_requests_reach_the_answer_and_the_stream(serve):
    auth_token, public = "secret-token", "https://voice.example.com"
    server = serve(
        pages=answer_pages(CARRIERS, TOKENS, public),
        guards=merge(twilio_guards(auth_token, public), TOKENS.guards(["twilio"])),
    )
    form = urllib.parse.urlencode(FORM).encode()
    answer_url = f"http://127.0.0.1:{server.port}/twilio/answer"

    def post(signature: str | None) -> tuple[int, bytes]:
        headers = {} if signature is None else {"X-Twilio-Signature": signature}
        try:
            with urllib.request.urlopen(urllib.request.Request(answer_url, form, headers)) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    good = twilio_signature(auth_token, f"{public}/twilio/answer", FORM)
    status, twiml = post(good)
    assert status == 200
    assert post(good) == (403, b"replayed request: this signature was accepted before\n")
    assert post(None) == (403, b"missing X-Twilio-Signature\n")
    assert post(twilio_signature("another-token", f"{public}/twilio/answer", FORM))[0] == 403
    tampered = twilio_signature(auth_token, f"{public}/twilio/answer", {**FORM, "To": "+1"})
    assert post(tampered) == (403, b"wrong X-Twilio-Signature\n")

    stream_path = urllib.parse.urlsplit(ET.fromstring(twiml).find(".//Stream").get("url")).path

    async def stream(signature: str | None) -> int | None:
        headers = {} if signature is None else {"X-Twilio-Signature": signature}
        url = f"ws://127.0.0.1:{server.port}{stream_path}"
        try:
            async with websockets.connect(url, additional_headers=headers) as ws:
                await ws.send(twilio_start(call="CA9"))
                await ws.send(twilio_media(b"\x55" * 160, 0))
                await asyncio.wait_for(ws.recv(), 5)  # the echo
                return None
        except websockets.InvalidStatus as refused:
            return refused.response.status_code

    signed_stream = twilio_signature(auth_token, f"wss://voice.example.com{stream_path}", {})
    assert asyncio.run(stream(signed_stream)) is None
    assert asyncio.run(stream(signed_stream)) is None  # a handshake is not held to once
    assert asyncio.run(stream(None)) == 403
    assert asyncio.run(stream(good)) == 403  # the answer's signature, not the stream's
    assert request_status(server.port, "/telnyx/answer?CallSid=x") == 200  # not guarded here


def request_status(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return reply.status
