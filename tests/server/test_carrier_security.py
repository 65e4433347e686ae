"""Each carrier as it reaches `flowcat-ft serve`: a signed webhook gets a stream and a call;
a tampered, replayed, expired or unsigned one, and a stream without its token, get a
refusal that names the problem, before any call or slab is taken."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import secrets
import time
import urllib.parse
import xml.etree.ElementTree as ET

import jwt
import pytest
import websockets
from carrier_messages import (
    exotel_session,
    payloads,
    plivo_session,
    receive_until,
    telnyx_session,
    twilio_session,
    vonage_session,
)
from ecdsa import Ed25519, SigningKey
from helpers import wait_until
from served import echo_config
from websockets.datastructures import Headers

from flowcat_ft.server.app import AgentServer
from flowcat_ft.server.carrierauth import exotel_guards
from flowcat_ft.server.signatures import plivo_signature, twilio_signature, vonage_payload_hash
from flowcat_ft.server.streamtokens import StreamTokens
from flowcat_ft.transports.http import HttpRequest

SECRETS = {
    "TEST_STREAM_KEY": "k" * 32,
    "TEST_TWILIO_TOKEN": "twilio-auth-token",
    "TEST_PLIVO_TOKEN": "plivo-auth-token",
    "TEST_VONAGE_SECRET": "vonage-signature-secret-0123456789",
    "TEST_EXOTEL_USER": "exotel-key",
    "TEST_EXOTEL_PASSWORD": "exotel-token",
}
TELNYX_KEY = SigningKey.from_string(b"\x11" * 32, curve=Ed25519)
TELNYX_PUBLIC = base64.b64encode(TELNYX_KEY.get_verifying_key().to_string()).decode()

TRANSPORTS = """\
transports:
  stream_token_key_env: TEST_STREAM_KEY
  twilio: {auth_token_env: TEST_TWILIO_TOKEN}
  telnyx: {public_key_env: TEST_TELNYX_KEY}
  plivo: {auth_token_env: TEST_PLIVO_TOKEN}
  vonage: {signature_secret_env: TEST_VONAGE_SECRET}
  exotel: {username_env: TEST_EXOTEL_USER, password_env: TEST_EXOTEL_PASSWORD,
           allow_from: [%s]}
"""


@pytest.fixture
def carrier_server(tmp_path, monkeypatch, agent_server):
    """Start the server with every carrier verified (Exotel allowing ``allow_from``)."""
    for name, value in {**SECRETS, "TEST_TELNYX_KEY": TELNYX_PUBLIC}.items():
        monkeypatch.setenv(name, value)

    def start(allow_from: str = "127.0.0.1") -> AgentServer:
        return agent_server(echo_config(tmp_path, TRANSPORTS % allow_from, playground=False))

    return start


def send(port: int, method: str, path: str, body: bytes = b"", headers=None):
    """The status and body of a plain HTTP request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        reply = connection.getresponse()
        return reply.status, reply.read().decode()
    finally:
        connection.close()


FORM = "application/x-www-form-urlencoded"


class Webhook:
    """A carrier's webhook for one call, signed as that carrier signs it."""

    def __init__(self, port: int, carrier: str) -> None:
        self.port, self.carrier = port, carrier
        self.base = f"http://127.0.0.1:{port}"

    def request(self, tamper: bool = False, unsigned: bool = False, age: float = 0):
        """(method, path, body, headers): signed, then changed if ``tamper``."""
        method, path, body, headers = getattr(self, self.carrier)(time.time() - age)
        if unsigned:
            headers = {k: v for k, v in headers.items() if k == "Content-Type"}
        if tamper:
            if method == "POST":
                body = body.replace(b"From=%2B1555", b"From=%2B1666")
            else:
                path = path.replace("from=1555", "from=1666")
        return method, path, body, headers

    def twilio(self, now: float):
        form = {"CallSid": "CA1", "From": "+15550001111", "To": "+15550002222"}
        signature = twilio_signature(
            SECRETS["TEST_TWILIO_TOKEN"], f"{self.base}/twilio/answer", form
        )
        headers = {"Content-Type": FORM, "X-Twilio-Signature": signature}
        return "POST", "/twilio/answer", urllib.parse.urlencode(form).encode(), headers

    def plivo(self, now: float):
        form = {"CallUUID": "12345678-1234-1234-1234-123456789abc", "From": "+15550001111"}
        nonce = secrets.token_hex(10)
        url = f"{self.base}/plivo/answer"
        signature = plivo_signature(SECRETS["TEST_PLIVO_TOKEN"], "POST", url, form, nonce)
        headers = {
            "Content-Type": FORM,
            "X-Plivo-Signature-V3": signature,
            "X-Plivo-Signature-V3-Nonce": nonce,
        }
        return "POST", "/plivo/answer", urllib.parse.urlencode(form).encode(), headers

    def telnyx(self, now: float):
        form = {"CallSid": "v3:call", "From": "+15550001111", "To": "+15550002222"}
        body = urllib.parse.urlencode(form).encode()
        timestamp = str(int(now))
        signature = TELNYX_KEY.sign(timestamp.encode() + b"|" + body)
        headers = {
            "Content-Type": FORM,
            "telnyx-timestamp": timestamp,
            "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
        }
        return "POST", "/telnyx/answer", body, headers

    def vonage(self, now: float):
        query = [("uuid", "v1"), ("from", "15550001111"), ("to", "15550002222")]
        claims = {
            "iat": int(now),
            "jti": secrets.token_hex(8),
            "iss": "Vonage",
            "payload_hash": vonage_payload_hash("GET", query, b""),
        }
        token = jwt.encode(claims, SECRETS["TEST_VONAGE_SECRET"], algorithm="HS256")
        path = "/vonage/answer?" + urllib.parse.urlencode(query)
        return "GET", path, b"", {"Authorization": f"Bearer {token}"}

    def exotel(self, now: float):
        path = "/exotel/answer?CallSid=CAexotel&from=1555"
        return "GET", path, b"", {"Authorization": exotel_credentials()}


def exotel_credentials() -> str:
    user, password = SECRETS["TEST_EXOTEL_USER"], SECRETS["TEST_EXOTEL_PASSWORD"]
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def stream_url_in(carrier: str, answer: str) -> str:
    if carrier in ("twilio", "telnyx"):
        return ET.fromstring(answer).find(".//Stream").get("url")
    if carrier == "plivo":
        return ET.fromstring(answer).find("./Stream").text
    if carrier == "vonage":
        return json.loads(answer)[0]["endpoint"][0]["uri"]
    return json.loads(answer)["url"]


def handshake_headers(carrier: str, url: str) -> dict[str, str]:
    """What the carrier sends on the stream's handshake besides the URL."""
    if carrier == "twilio":
        return {"X-Twilio-Signature": twilio_signature(SECRETS["TEST_TWILIO_TOKEN"], url, {})}
    if carrier == "exotel":
        return {"Authorization": exotel_credentials()}
    return {}


SESSIONS = {
    "twilio": (twilio_session, [b"\x55" * 160] * 5),
    "telnyx": (telnyx_session, [b"\x55" * 160] * 5),
    "plivo": (plivo_session, [b"\x55" * 160] * 5),
    "exotel": (exotel_session, [b"\x10\x00" * 800] * 2),
    "vonage": (vonage_session, [b"\x10\x00" * 320] * 5),
}


def stream(url: str, messages: list, headers: dict[str, str]) -> tuple[int, str] | bytes:
    """The HTTP status and reason that refused the handshake, or the first audio echoed."""

    async def run():
        try:
            async with websockets.connect(url, additional_headers=headers) as ws:
                for message in messages:
                    await ws.send(message)
                echo = await receive_until(ws, lambda got: len(payloads(got)) >= 1, "the echo")
                return payloads(echo)[0]
        except websockets.InvalidStatus as refused:
            return refused.response.status_code, refused.response.body.decode()

    return asyncio.run(run())


def no_call_was_opened(server: AgentServer, accepted: int = 0) -> bool:
    runtime = server.runtime
    return (
        wait_until(lambda: runtime.metrics()["calls"]["ended"] == accepted, 10)
        and runtime.calls == []
        and wait_until(lambda: runtime.pool.in_use == 0)
    )


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "plivo", "vonage", "exotel"])
def test_a_signed_webhook_gets_a_call_and_nothing_else_does(carrier_server, carrier):
    server = carrier_server()
    webhook = Webhook(server.port, carrier)

    refusals = {
        "tampered": send(server.port, *webhook.request(tamper=True)),
        "unsigned": send(server.port, *webhook.request(unsigned=True)),
    }
    signed = webhook.request()
    status, answer = send(server.port, *signed)
    assert status == 200, answer
    if carrier != "exotel":  # basic auth cannot tell a repeat from the first
        refusals["replayed"] = send(server.port, *signed)
    if carrier in ("telnyx", "vonage"):  # their signatures carry the time
        refusals["expired"] = send(server.port, *webhook.request(age=301))
    reasons = {
        "twilio": {
            "tampered": "wrong X-Twilio-Signature",
            "unsigned": "missing X-Twilio-Signature",
        },
        "plivo": {
            "tampered": "wrong X-Plivo-Signature-V3",
            "unsigned": "missing X-Plivo-Signature-V3 or X-Plivo-Signature-V3-Nonce",
        },
        "telnyx": {
            "tampered": "wrong telnyx-signature-ed25519",
            "unsigned": "missing telnyx-timestamp",
            "expired": "telnyx-timestamp is older than 300 s (expired)",
        },
        "vonage": {
            "tampered": "the body does not match the Vonage JWT's payload_hash",
            "unsigned": "missing Authorization: Bearer <JWT signed by Vonage>",
            "expired": "the Vonage JWT is older than 300 s (expired)",
        },
        "exotel": {
            "tampered": None,  # Exotel signs nothing: a changed query goes through
            "unsigned": "missing Authorization: Basic credentials",
        },
    }[carrier]
    if carrier != "exotel":
        reasons["replayed"] = "replayed request: this signature was accepted before"
    for case, reason in reasons.items():
        if reason is not None:
            expected = 401 if carrier == "exotel" else 403
            assert refusals[case] == (expected, reason + "\n"), case
    assert no_call_was_opened(server)

    url = stream_url_in(carrier, answer)
    session, frames = SESSIONS[carrier]
    assert stream(url, session(frames), handshake_headers(carrier, url)) == frames[0]  # the echo
    assert no_call_was_opened(server, accepted=1)


def test_exotel_from_an_address_it_does_not_call_from_is_refused(carrier_server):
    server = carrier_server(allow_from="203.0.113.0/24")
    status, reason = send(server.port, *Webhook(server.port, "exotel").request())
    assert (status, reason) == (403, "requests from 127.0.0.1 are not allowed\n")
    url = f"ws://127.0.0.1:{server.port}/exotel/{StreamTokens(b'k' * 32).issue('exotel', 'c')}"
    refused = stream(url, [], {"Authorization": exotel_credentials()})
    assert refused == (403, "requests from 127.0.0.1 are not allowed\n")
    assert no_call_was_opened(server)


def test_a_stream_without_a_valid_token_for_its_carrier_and_call_is_refused(carrier_server):
    server = carrier_server()
    tokens = StreamTokens(SECRETS["TEST_STREAM_KEY"].encode())  # the server's key
    base = f"ws://127.0.0.1:{server.port}"
    call, frames = SESSIONS["telnyx"]

    def attempt(path: str):
        return stream(base + path, call(frames), {})

    assert attempt("/telnyx") == (
        403,
        "a telnyx stream needs a token: connect to the stream URL that /telnyx/answer gave, "
        "/telnyx/<token>\n",
    )
    expired = tokens.issue("telnyx", "v3:call", ttl=-1)
    assert attempt(f"/telnyx/{expired}") == (403, "the stream token has expired\n")
    for_plivo = tokens.issue("plivo", "v3:call")
    assert attempt(f"/telnyx/{for_plivo}") == (403, "the stream token is for plivo, not telnyx\n")
    forged = StreamTokens(b"another key, not the server's one").issue("telnyx", "v3:call")
    assert attempt(f"/telnyx/{forged}") == (403, "the stream token's signature is wrong\n")
    assert no_call_was_opened(server)

    async def another_call() -> tuple[int, str]:
        url = f"{base}/telnyx/{tokens.issue('telnyx', 'v3:some-other-call')}"
        async with websockets.connect(url) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):  # it may close first
                for message in call(frames):
                    await ws.send(message)
            await asyncio.wait_for(ws.wait_closed(), 10)
            return ws.close_code, ws.close_reason

    assert asyncio.run(another_call()) == (1008, "the stream token is for another call")
    assert no_call_was_opened(server)
    valid = tokens.issue("telnyx", "v3:call")
    assert attempt(f"/telnyx/{valid}") == frames[0]  # the echo
    assert no_call_was_opened(server, accepted=1)


def test_start_up_names_the_carriers_whose_webhooks_are_not_verified(tmp_path):
    config = echo_config(tmp_path, "transports: {carriers: [telnyx, raw]}\n", playground=False)
    steps: list[str] = []
    server = AgentServer(config, progress=steps.append).start()
    try:
        assert (
            "webhooks not verified for telnyx: anyone who reaches /<carrier>/answer can start "
            "calls (set transports.<carrier>, see examples/agent.yaml)"
        ) in steps
    finally:
        server.stop(grace=0)


def test_exotel_is_asked_for_its_credentials():
    guard = exotel_guards("exotel-key", "exotel-token")["/exotel"]
    request = HttpRequest("GET", "/exotel", {}, Headers(), client="127.0.0.1")
    refusal = guard(request)
    assert (refusal.status, refusal.headers) == (
        401,
        {"WWW-Authenticate": 'Basic realm="flowcat-ft"'},
    )
