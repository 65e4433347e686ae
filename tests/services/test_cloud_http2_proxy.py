"""Providers' HTTP over HTTP/2 and through a proxy: the fake providers speak HTTP/2 to TLS
clients that offer it in ALPN (hyper-h2 on the server side), and tinyproxy (Debian's) is
the proxy that ``HTTPS_PROXY`` / ``HTTP_PROXY`` name. Services reach both through their
configuration and the environment alone."""

from __future__ import annotations

import asyncio
import re
import ssl

import pytest
from fake_providers import (
    FakeHTTPServer,
    Recorder,
    errors,
    openai_chunks,
    pcm_handler,
    say_hello,
    server_context,
    sse_handler,
    texts,
    tone,
)
from helpers import wait_until
from tinyproxy import Tinyproxy

from flowcat_ft import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    Pipeline,
    TranscriptionFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.services.llm import OpenAILLMService
from flowcat_ft.services.llm.frames import LLMMessagesFrame
from flowcat_ft.services.net.http import HTTPClient, HTTPConnectError, Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.stt import OpenAISTTService
from flowcat_ft.services.tts import OpenAITTSService

FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)
TIMEOUTS = Timeouts(connect=2.0, head=2.0, read=2.0)
CHAT = "/v1/chat/completions"
SPEECH = "/v1/audio/speech"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def h2_server(certificate):
    server = FakeHTTPServer(server_context(certificate), http2=True)
    yield server
    server.close()


@pytest.fixture
def proxy(tmp_path):
    proxy = Tinyproxy(tmp_path)
    yield proxy
    proxy.close()


def openai_llm(server, **kwargs):
    options = {"retry": FAST, "timeouts": TIMEOUTS, **kwargs}
    return lambda: OpenAILLMService(
        model="fake-model", base_url=server.url + "/v1", api_key="sk-h2-123456", **options
    )


def openai_tts(server, **kwargs):
    options = {"retry": FAST, "timeouts": TIMEOUTS, **kwargs}
    return lambda: OpenAITTSService(base_url=server.url + "/v1", api_key="sk-h2-1", **options)


def openai_stt(server, certificate):
    return lambda: OpenAISTTService(
        base_url=server.url + "/v1",
        api_key="sk-h2-2",
        retry=FAST,
        timeouts=TIMEOUTS,
        min_secs=0.0,
        ca_file=certificate[0],
    )


def finals(out: Recorder) -> list[str]:
    return [f.text for f in out.of(TranscriptionFrame)]


# -- HTTP/2 ------------------------------------------------------------------------------------


def fetch_all(url: str, client_options: dict, requests: int, **options) -> list[tuple[str, bytes]]:
    """``requests`` concurrent POSTs to ``url``: each response's HTTP version and body."""

    async def main():
        client = HTTPClient(**client_options)
        try:

            async def one():
                response = await client.request("POST", url, json={"input": "a"}, **options)
                return response.http_version, await response.read()

            return await asyncio.gather(*(one() for _ in range(requests)))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_responses_read_whole_take_http2_where_offered_and_share_a_connection(
    h2_server, certificate
):
    h2_server.routes[SPEECH] = pcm_handler(b"x" * 40000, chunk_bytes=1000, delay=0.005)
    got = fetch_all(h2_server.url + SPEECH, {"ca_file": certificate[0]}, 3, streamed=False)
    assert got == [("HTTP/2", b"x" * 40000)] * 3
    assert [r.http_version for r in h2_server.requests] == ["HTTP/2"] * 3
    assert h2_server.requests[0].json() == {"input": "a"}
    assert h2_server.connections == 1  # multiplexed


def test_a_streamed_response_stays_on_http1_so_that_closing_it_reaches_the_server(
    h2_server, certificate
):
    h2_server.routes["/slow"] = pcm_handler(b"y" * 20000, chunk_bytes=500, delay=0.02)

    async def main():
        client = HTTPClient(ca_file=certificate[0])
        try:
            response = await client.request("GET", h2_server.url + "/slow")
            first = await anext(response.aiter_bytes())
            await response.aclose()  # the caller barged in
            return response.http_version, first
        finally:
            await client.aclose()

    version, first = asyncio.run(main())
    assert version == "HTTP/1.1" and first
    assert h2_server.wait_for(lambda: h2_server.disconnects == 1)  # the server saw it go


def test_a_context_of_the_caller_stays_on_http1(h2_server, certificate):
    h2_server.routes[SPEECH] = pcm_handler(b"x" * 100)
    trusting = ssl.create_default_context(cafile=certificate[0])
    got = fetch_all(h2_server.url + SPEECH, {"ssl_context": trusting}, 1, streamed=False)
    assert got == [("HTTP/1.1", b"x" * 100)]


def test_an_llm_over_https_is_cut_off_by_an_interruption(runtime, h2_server, certificate):
    h2_server.routes[CHAT] = sse_handler(openai_chunks([f" w{i}" for i in range(40)]), delay=0.05)
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_llm(h2_server, ca_file=certificate[0])]), out)
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: len(texts(out)) >= 3)
    assert h2_server.requests[0].headers["authorization"] == "Bearer sk-h2-123456"
    call.interrupt()
    assert h2_server.wait_for(lambda: h2_server.disconnects == 1)  # the provider saw it go
    sent = h2_server.events_sent
    assert wait_until(lambda: out.of(InterruptionFrame))
    assert h2_server.events_sent <= sent + 1 < 40 and not errors(out)
    call.close()


def transcribe_turn(call, seconds: float = 0.3) -> None:
    call.push(UserStartedSpeakingFrame())
    silence = bytes(640)
    for _ in range(int(seconds / 0.02)):
        call.push_audio(silence, 16000)
    call.push(UserStoppedSpeakingFrame())


def test_calls_transcribing_on_one_event_loop_share_an_http2_connection(
    runtime, h2_server, certificate
):
    async def transcription(request, reply):
        await reply.json(200, {"text": "hello there"})

    h2_server.routes[TRANSCRIPTIONS] = transcription
    outs, calls = [], []
    for _ in range(6):
        out = Recorder()
        calls.append(runtime.open_call(Pipeline([openai_stt(h2_server, certificate)]), out))
        outs.append(out)
    for call in calls:
        transcribe_turn(call)
    for out in outs:
        assert wait_until(lambda out=out: finals(out) == ["hello there"])
        assert not errors(out)
    assert [r.http_version for r in h2_server.requests] == ["HTTP/2"] * 6
    # One client, so one connection, per event loop the calls' services were given.
    assert h2_server.connections <= runtime.threads
    for call in calls:
        call.close()
    # The last call on a loop closes its client: the server sees every connection go.
    assert h2_server.wait_for(lambda: h2_server.connections_closed == h2_server.connections)


# -- proxies from the environment ----------------------------------------------------------


def test_https_goes_through_the_proxy_in_HTTPS_PROXY_with_http2_inside_the_tunnel(
    runtime, h2_server, certificate, proxy, monkeypatch
):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)

    async def transcription(request, reply):
        await reply.json(200, {"text": "through the tunnel"})

    h2_server.routes[TRANSCRIPTIONS] = transcription
    h2_server.routes[SPEECH] = pcm_handler(tone(0.3, 24000), chunk_bytes=4800)
    out = Recorder()
    stt, tts = openai_stt(h2_server, certificate), openai_tts(h2_server, ca_file=certificate[0])
    call = runtime.open_call(Pipeline([stt, tts]), out)
    transcribe_turn(call)
    assert wait_until(lambda: finals(out) == ["through the tunnel"])
    say_hello(call)
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    assert out.of(TTSAudioRawFrame) and not errors(out)
    connect = f"CONNECT 127.0.0.1:{h2_server.port} "
    assert proxy.wait_for_request(connect)
    assert all(r.startswith(connect) for r in proxy.requests())
    # End to end through the tunnels: the transcription over HTTP/2, the speech over 1.1.
    assert [r.http_version for r in h2_server.requests] == ["HTTP/2", "HTTP/1.1"]
    call.close()


def test_a_stream_through_the_proxy_arrives_as_it_is_sent(runtime, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    server = FakeHTTPServer()
    try:
        server.routes[CHAT] = sse_handler(openai_chunks([f" w{i}" for i in range(20)]), delay=0.05)
        out = Recorder()
        call = runtime.open_call(Pipeline([openai_llm(server)]), out)
        call.push(LLMMessagesFrame(USER))
        assert wait_until(lambda: texts(out))
        assert server.events_sent < 20  # the first token is out before the stream is
        assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
        assert "".join(texts(out)) == "".join(f" w{i}" for i in range(20))
        assert "tinyproxy" in server.requests[0].headers.get("via", "")  # it came through
        assert proxy.requests() == [f"POST {server.url}{CHAT} HTTP/1.1"]
        call.close()
    finally:
        server.close()


def test_NO_PROXY_sends_requests_past_the_proxy(runtime, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = FakeHTTPServer()
    try:
        server.routes[CHAT] = sse_handler(openai_chunks(["Direct."]))
        out = Recorder()
        call = runtime.open_call(Pipeline([openai_llm(server)]), out)
        call.push(LLMMessagesFrame(USER))
        assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
        assert texts(out) == ["Direct."] and "via" not in server.requests[0].headers
        assert proxy.requests() == []
        call.close()
    finally:
        server.close()


def test_a_proxy_that_is_down_is_a_connect_error_naming_the_request(proxy, monkeypatch):
    proxy.close()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)

    async def main():
        client = HTTPClient()
        try:
            await client.request("GET", "http://127.0.0.1:9/v1/models", retry=FAST)
        finally:
            await client.aclose()

    with pytest.raises(
        HTTPConnectError, match=re.escape("could not connect to http://127.0.0.1:9/")
    ):
        asyncio.run(main())
