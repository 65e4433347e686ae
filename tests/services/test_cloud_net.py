"""The networking under the cloud services: SSE parsing without sockets, the HTTP client
against a local server (streaming, keep-alive, retries, timeouts, errors), and API keys
kept out of logs and reprs. HTTP/2 and proxies: test_cloud_http2.py."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fake_providers import FakeHTTPServer, FakeWSServer, pcm_handler, raw_handler, status_handler

from flowcat_ft.services.net.auth import MissingAPIKeyError, Secret, api_key, redact_headers
from flowcat_ft.services.net.errors import ProviderProtocolError, json_object
from flowcat_ft.services.net.http import (
    HTTPClient,
    HTTPConnectError,
    HTTPProtocolError,
    HTTPStatusError,
    HTTPTimeoutError,
    Timeouts,
)
from flowcat_ft.services.net.retry import RetryPolicy, parse_retry_after, retrying
from flowcat_ft.services.net.sse import SSEEvent, SSEParser
from flowcat_ft.services.net.ws import connect_ws

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)

# -- Server-Sent Events ----------------------------------------------------------------------


def feed_all(data: bytes, step: int | None = None) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    if step is None:
        events += parser.feed(data)
    else:
        for i in range(0, len(data), step):
            events += parser.feed(data[i : i + step])
    events += parser.close()
    return events


STREAM = (
    b"\xef\xbb\xbf: a comment\r\n"
    b"event: greeting\r\n"
    b"data: hello\r\n"
    b"data:  two spaces\r\n"
    b"id: 7\r\n"
    b"\r\n"
    b"data: second\n\n"
    b"retry: 1500\r"
    b"data\r"
    b"\r"
    b'data: {"x": "\xc3\xa9"}\n\n'
    b"event: ignored-without-data\n\n"
    b"data: never dispatched"
)
EXPECTED = [
    SSEEvent("hello\n two spaces", "greeting", "7"),
    SSEEvent("second", "message", "7"),
    SSEEvent("", "message", "7"),
    SSEEvent('{"x": "é"}', "message", "7"),
]


@pytest.mark.parametrize("step", [None, 1, 2, 3, 7])
def test_sse_events_per_the_whatwg_rules_however_the_bytes_are_split(step):
    assert feed_all(STREAM, step) == EXPECTED


def test_sse_retry_and_a_crlf_split_across_chunks():
    parser = SSEParser()
    assert parser.feed(b"retry: 1500\r") == []
    assert parser.feed(b"\ndata: a\r") == []
    assert parser.feed(b"\n\r\n") == [SSEEvent("a")]
    assert parser.retry_ms == 1500
    parser.feed(b"retry: soon\n")
    assert parser.retry_ms == 1500  # not all digits: ignored


def test_sse_refuses_an_endless_line():
    parser = SSEParser(max_line=100)
    with pytest.raises(ValueError):
        parser.feed(b"data: " + b"x" * 200)


# -- retries -----------------------------------------------------------------------------------


def test_retry_after_and_backoff_are_bounded():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=0.3, jitter=0.5)
    for retry in (1, 2, 3):
        delay = policy.delay(retry)
        assert delay is not None and delay <= 0.3
        assert delay >= min(0.3, 0.1 * 2 ** (retry - 1)) * 0.5
    assert policy.delay(4) is None  # attempts spent
    assert policy.delay(1, retry_after=2.0) == 2.0
    assert policy.delay(1, retry_after=60.0) is None  # longer than a call can wait


def test_retrying_gives_up_on_what_is_not_retryable():
    calls = []

    async def fail():
        calls.append(1)
        raise ValueError("a bug, not a network error")

    with pytest.raises(ValueError):
        asyncio.run(retrying(fail, FAST))
    assert len(calls) == 1


# -- the HTTP client against a local server ------------------------------------------------------


@pytest.fixture
def server():
    srv = FakeHTTPServer()
    yield srv
    srv.close()


def run(coro):
    return asyncio.run(coro)


def test_a_streamed_body_arrives_as_it_is_sent_and_the_connection_is_reused(server):
    server.routes["/pcm"] = pcm_handler(b"x" * 4000, chunk_bytes=1000, delay=0.05)

    async def main():
        client = HTTPClient()
        arrivals = []
        for _ in range(2):
            response = await client.request("GET", server.url + "/pcm")
            start = time.monotonic()
            async for data in response.aiter_bytes():
                arrivals.append((time.monotonic() - start, len(data)))
        await client.aclose()
        return arrivals

    arrivals = run(main())
    assert sum(n for _, n in arrivals) == 8000
    assert arrivals[0][0] < 0.1 and arrivals[3][0] > 0.1  # streamed, not buffered
    assert server.connections == 1  # keep-alive: one connection for both requests


def test_429_is_retried_after_retry_after(server):
    server.routes["/x"] = [
        status_handler(429, headers={"Retry-After": "1"}),
        status_handler(200, {"ok": True}),
    ]

    async def main():
        client = HTTPClient()
        retries = []
        start = time.monotonic()
        response = await client.request(
            "POST",
            server.url + "/x",
            json={},
            retry=FAST,
            on_retry=lambda retry, error, delay: retries.append((retry, delay)),
        )
        body, elapsed = await response.json(), time.monotonic() - start
        await client.aclose()
        return body, elapsed, retries

    body, elapsed, retries = run(main())
    assert body == {"ok": True} and retries == [(1, 1.0)]
    assert elapsed >= 0.95  # it waited as asked


def test_5xx_retries_run_out_into_an_error_with_status_and_truncated_body(server):
    server.routes["/x"] = status_handler(503, {"error": {"message": "overloaded " * 400}})

    async def main():
        client = HTTPClient()
        with pytest.raises(HTTPStatusError) as caught:
            await client.request("GET", server.url + "/x", retry=FAST)
        return caught.value

    error = run(main())
    assert error.status == 503 and "overloaded" in error.body
    assert len(error.body) <= 2048 and len(str(error)) < 500
    assert len(server.requests) == 3  # every attempt the policy allows


def test_4xx_is_not_retried(server):
    server.routes["/x"] = status_handler(401, {"error": {"message": "bad key"}})

    async def main():
        with pytest.raises(HTTPStatusError, match="401"):
            await HTTPClient().request("GET", server.url + "/x", retry=FAST)

    run(main())
    assert len(server.requests) == 1


def test_connect_refused_is_retried_then_reported(server):
    port = server.port
    server.close()

    async def main():
        with pytest.raises(HTTPConnectError):
            await HTTPClient().request("GET", f"http://127.0.0.1:{port}/x", retry=FAST)

    run(main())


def test_a_stalled_stream_times_out(server):
    server.routes["/pcm"] = pcm_handler(b"x" * 4000, chunk_bytes=1000, stall_after=1)

    async def main():
        client = HTTPClient()
        timeouts = Timeouts(connect=1, head=1, read=0.2)
        response = await client.request("GET", server.url + "/pcm", timeouts=timeouts)
        with pytest.raises(HTTPTimeoutError):
            async for _ in response.aiter_bytes():
                pass

    run(main())
    assert server.wait_for(lambda: server.disconnects == 1)  # the client hung up


def test_garbage_from_the_server_is_a_protocol_error(server):
    server.routes["/x"] = raw_handler(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    async def main():
        with pytest.raises(HTTPProtocolError):
            await HTTPClient().request("GET", server.url + "/x", retry=FAST)

    run(main())


# -- keys ----------------------------------------------------------------------------------------


def test_keys_come_from_the_environment_and_hide_in_reprs(monkeypatch):
    monkeypatch.setenv("FLOWCAT_TEST_KEY", "sk-env-0123456789")
    key = api_key("FLOWCAT_TEST_KEY")
    assert key.reveal() == "sk-env-0123456789"
    assert "0123" not in repr(key) and "0123" not in str(key) and "0123" not in f"{key}"
    monkeypatch.delenv("FLOWCAT_TEST_KEY")
    with pytest.raises(MissingAPIKeyError, match="FLOWCAT_TEST_KEY"):
        api_key("FLOWCAT_TEST_KEY")
    shown = redact_headers({"Authorization": "Bearer x", "X-Api-Key": "y", "Accept": "a"})
    assert shown == [("Authorization", "***"), ("X-Api-Key", "***"), ("Accept", "a")]


class _Echo(FakeWSServer):
    async def session(self, ws):
        async for message in ws:
            await ws.send(message)


def test_keys_never_reach_a_log_line_even_at_debug(server, caplog):
    secret = "sk-live-SECRET-4f9a8b7c6d5e"
    server.routes["/x"] = status_handler(401, {"error": {"message": "invalid key"}})
    echo = _Echo("fake-echo")
    caplog.set_level(logging.DEBUG)

    async def main():
        client = HTTPClient()
        with pytest.raises(HTTPStatusError) as caught:
            await client.request(
                "POST",
                server.url + "/x",
                headers={"Authorization": Secret(f"Bearer {secret}")},
                json={"q": 1},
                retry=FAST,
            )
        texts = [str(caught.value), repr(caught.value), repr(caught.value.headers)]
        ws = await connect_ws(
            echo.url, {"Authorization": Secret(f"Token {secret}"), "xi-api-key": Secret(secret)}
        )
        await ws.send("hello")
        await ws.recv()
        await ws.close()
        return texts

    try:
        texts = run(main())
    finally:
        echo.close()
    assert server.requests[0].headers["authorization"] == f"Bearer {secret}"  # it was sent
    assert echo.handshakes[0]["xi-api-key"] == secret
    # Every record but the fake provider's own (websockets.server logs what it received).
    logged = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server")]
    assert any("Authorization" in m for m in logged)  # the handshake was logged at DEBUG...
    for text in logged + texts:
        assert secret not in text  # ...with the key scrubbed


def test_the_cloud_services_leave_the_gil_off():
    import subprocess
    import sys

    modules = [
        "h2.connection",  # httpx imports it only once an HTTP/2 connection is made
        "flowcat_ft.services.net.http",
        "flowcat_ft.services.net.ws",
        "flowcat_ft.services.llm.openai",
        "flowcat_ft.services.llm.anthropic",
        "flowcat_ft.services.stt",
        "flowcat_ft.services.tts",
        "flowcat_ft.services.s2s",
        "flowcat_ft.services.aggregators",
        "flowcat_ft.services.tools",
        "flowcat_ft.telemetry.export",  # the OpenTelemetry SDK, the OTLP exporter, protobuf
    ]
    code = f"import sys, {', '.join(modules)}; print(sys._is_gil_enabled())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == str(sys._is_gil_enabled())  # False on 3.13t


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"\x00\x01", "a 2-byte binary message (expected JSON)"),
        ("{not json", "an event that is not JSON: '{not json'"),
        ("[1, 2]", "an event that is not an object: '[1, 2]'"),
    ],
)
def test_a_provider_message_that_is_not_a_json_object_is_named(message, problem):
    assert json_object('{"type": "ok"}', "an event") == {"type": "ok"}
    with pytest.raises(ProviderProtocolError) as raised:
        json_object(message, "an event")
    assert str(raised.value) == problem
