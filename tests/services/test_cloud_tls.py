"""HTTPS and WSS to providers: a local TLS server whose self-signed certificate is made
here with the ``openssl`` command line. Certificates are verified by default (the
system's CAs refuse this one); a service given ``ca_file`` or ``ssl_context`` trusts it."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from fake_providers import (
    FakeDeepgram,
    FakeHTTPServer,
    Recorder,
    errors,
    pcm_handler,
    say_hello,
    server_context,
    tone,
)
from helpers import wait_until

from flowcat_ft import (
    LLMFullResponseEndFrame,
    Pipeline,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from flowcat_ft.services.net.http import HTTPClient, HTTPConnectError, Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.stt import DeepgramSTTService
from flowcat_ft.services.tts import OpenAITTSService

FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)
ONCE = RetryPolicy(attempts=1)


@pytest.fixture
def https(certificate):
    server = FakeHTTPServer(server_context(certificate))
    server.routes["/v1/audio/speech"] = pcm_handler(tone(0.3, 24000), chunk_bytes=4800)
    yield server
    server.close()


# -- the HTTP client --------------------------------------------------------------------------


def fetch(url: str, **tls) -> bytes:
    async def go() -> bytes:
        client = HTTPClient(**tls)
        try:
            response = await client.request("POST", url, json={"input": "hi"}, retry=ONCE)
            return await response.read()
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_https_with_the_server_s_ca_trusted(https, certificate):
    trusting = ssl.create_default_context(cafile=certificate[0])
    body = fetch(https.url + "/v1/audio/speech", ssl_context=trusting)
    assert len(body) == len(tone(0.3, 24000))
    assert https.requests[0].json() == {"input": "hi"}


def test_https_certificates_are_verified_by_default(https):
    with pytest.raises(HTTPConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(https.url + "/v1/audio/speech")
    assert not https.requests  # nothing was sent over the untrusted connection


# -- services, through their configuration --------------------------------------------------


def openai_tts(server, **tls):
    return lambda: OpenAITTSService(
        base_url=server.url + "/v1",
        api_key="sk-tls-1",
        retry=FAST,
        timeouts=Timeouts(connect=2, head=2, read=2),
        **tls,
    )


def test_an_http_service_given_a_ca_file(runtime, https, certificate):
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_tts(https, ca_file=certificate[0])]), out)
    say_hello(call)
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    assert out.of(TTSAudioRawFrame) and not errors(out)
    assert https.requests[0].headers["authorization"] == "Bearer sk-tls-1"
    call.close()


def test_an_http_service_without_one_refuses_the_server(runtime, https):
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_tts(https)]), out)
    say_hello(call)
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    [error] = errors(out)
    assert "CERTIFICATE_VERIFY_FAILED" in error.error
    assert not out.of(TTSAudioRawFrame) and not https.requests
    call.close()


@pytest.fixture
def wss_deepgram(certificate):
    server = FakeDeepgram(["over", "tls"], ssl_context=server_context(certificate))
    yield server
    server.close()


def deepgram_stt(server, **tls):
    return lambda: DeepgramSTTService(
        url=server.url + "/v1/listen", api_key="dg-tls-1", retry=FAST, **tls
    )


def test_a_websocket_service_given_an_ssl_context(runtime, wss_deepgram, certificate):
    trusting = ssl.create_default_context(cafile=certificate[0])
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(wss_deepgram, ssl_context=trusting)]), out)
    audio = tone(0.4, 16000)
    for i in range(0, len(audio), 640):
        call.push_audio(audio[i : i + 640], 16000)
    assert wait_until(lambda: [f.text for f in out.of(TranscriptionFrame)][-1:] == ["over tls"])
    assert wss_deepgram.handshakes[0]["authorization"] == "Token dg-tls-1"
    call.close()


def test_a_websocket_service_without_one_refuses_the_server(runtime, wss_deepgram):
    out = Recorder()
    call = runtime.open_call(Pipeline([deepgram_stt(wss_deepgram)]), out)
    assert call.wait(5)  # an STT that cannot connect ends the call
    [error] = errors(out)
    assert "CERTIFICATE_VERIFY_FAILED" in error.error and error.fatal
    assert not wss_deepgram.handshakes


def test_ssl_context_and_ca_file_are_one_or_the_other(certificate):
    with pytest.raises(ValueError, match="not both"):
        OpenAITTSService(
            api_key="k", ssl_context=ssl.create_default_context(), ca_file=certificate[0]
        )
