"""A provider's fault touches only the call it serves.

Several calls share one local fake of a provider; the one call whose request goes wrong
meets a provider that stalls, sends garbage, or closes mid-stream: Deepgram-style speech to
text, an OpenAI-compatible LLM, Cartesia-style text to speech. That call gets a clear,
non-fatal error naming the problem (never the peer's raw bytes or a traceback), its
caller hears the documented fallback (the LLM's fallback line; the TTS ends the reply; the
STT reconnects), and its next turn works; every other call gets its whole answer with no
error; every slab comes back. (Each fault on one call alone is in test_cloud_stt.py,
test_cloud_llm.py and test_cloud_tts.py.)
"""

from __future__ import annotations

import pytest
from fake_providers import (
    FakeCartesia,
    FakeDeepgram,
    FakeHTTPServer,
    Recorder,
    openai_chunks,
    sse_handler,
    tone,
)
from helpers import wait_until

from flowcat_ft import (
    Direction,
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    Pipeline,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from flowcat_ft.services.llm import OpenAILLMService
from flowcat_ft.services.llm.frames import LLMMessagesFrame, TTSSpeakFrame
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.stt import DeepgramSTTService
from flowcat_ft.services.tts import CartesiaTTSService

HEALTHY = 3
ONCE = RetryPolicy(attempts=1)
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
USER = [{"role": "user", "content": "hi"}]
ANSWER = ["It", " is", " sunny", " in", " Rome."]
FALLBACK = "Sorry, give me a moment."


def errors(out: Recorder) -> list[ErrorFrame]:
    return out.of(ErrorFrame, Direction.UPSTREAM)


def ended(out: Recorder, n: int = 1) -> bool:
    return len(out.of(LLMFullResponseEndFrame)) >= n


@pytest.fixture
def http():
    server = FakeHTTPServer()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (sse_handler(openai_chunks(ANSWER), stall_after=2), "HTTPTimeoutError: no data from"),
        (sse_handler(["data: <html>502 Bad Gateway</html>\n\n"]), "event that is not JSON"),
        (sse_handler(openai_chunks(ANSWER), cut_after=2), "broke off mid-body"),
    ],
    ids=["stall", "garbage", "closed-mid-stream"],
)
def test_an_llm_fault_fails_only_its_own_turn(runtime, http, fault, expected):
    answer = sse_handler(openai_chunks(ANSWER), delay=0.02)
    http.routes["/v1/chat/completions"] = [fault, answer]  # the first request meets the fault
    llm = lambda: OpenAILLMService(  # noqa: E731
        model="fake-model",
        base_url=http.url + "/v1",
        api_key="sk-test-123456",
        retry=ONCE,
        timeouts=Timeouts(connect=1.0, head=1.0, read=0.5),
        fallback_text=FALLBACK,
    )
    faulty, *healthy = outs = [Recorder() for _ in range(1 + HEALTHY)]
    calls = [runtime.open_call(Pipeline([llm]), out) for out in outs]
    calls[0].push(LLMMessagesFrame(USER))
    assert http.wait_for(lambda: len(http.requests) == 1)
    for call in calls[1:]:
        call.push(LLMMessagesFrame(USER))

    assert wait_until(lambda: all(ended(out) for out in outs), 10)
    [error] = errors(faulty)
    assert error.error.startswith(f"{error.processor}: ") and expected in error.error
    assert not error.fatal and "Traceback" not in error.error
    assert [f.text for f in faulty.of(TTSSpeakFrame)] == [FALLBACK]
    for out in healthy:
        assert [f.text for f in out.of(LLMTextFrame)] == ANSWER and not errors(out)
    calls[0].push(LLMMessagesFrame(USER))  # the faulty call goes on
    assert wait_until(lambda: ended(faulty, 2))
    assert [f.text for f in faulty.of(LLMTextFrame)][-len(ANSWER) :] == ANSWER
    for call in calls:
        call.close()
        assert call.end_reason == "ended" and not call.failed


@pytest.fixture
def cartesia():
    server = FakeCartesia(word_secs=0.1, chunk_secs=0.05, delay=0.01)
    yield server
    server.close()


def respond(call, text: str) -> None:
    call.push(LLMFullResponseStartFrame())
    for word in text.split(" "):
        call.push(LLMTextFrame(word + " "))
    call.push(LLMFullResponseEndFrame())


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("stall", "no audio from the TTS for 0.5 s"),
        ("garbage", "ProviderProtocolError: a message that is not JSON"),
        ("close", "TTSConnectionLost: the TTS connection closed with code 1011 (internal error)"),
    ],
    ids=["stall", "garbage", "closed-mid-stream"],
)
def test_a_tts_fault_fails_only_its_own_reply(runtime, cartesia, mode, expected):
    cartesia.mode, cartesia.fault_on = mode, "Broken"
    tts = lambda: CartesiaTTSService(  # noqa: E731
        voice_id="voice-1",
        url=cartesia.url,
        api_key="ck-test-5678",
        sample_rate=24000,
        retry=FAST,
        read_timeout=0.5,
    )
    faulty, *healthy = outs = [Recorder() for _ in range(1 + HEALTHY)]
    calls = [runtime.open_call(Pipeline([tts]), out) for out in outs]
    respond(calls[0], "Broken reply here.")
    for call in calls[1:]:
        respond(call, "One two three four five six.")

    assert wait_until(lambda: all(ended(out) for out in outs), 10)
    [error] = errors(faulty)
    assert error.error.startswith(f"{error.processor}: ") and expected in error.error
    assert not error.fatal and "Traceback" not in error.error
    for out in healthy:
        words = [f.text for f in out.of(TTSTextFrame)]
        assert words == ["One", "two", "three", "four", "five", "six."] and not errors(out)
        heard = sum(f.num_frames / f.sample_rate for f in out.of(TTSAudioRawFrame))
        assert heard == pytest.approx(6 * cartesia.word_secs)
    respond(calls[0], "Still here.")  # the faulty call's next reply is heard
    assert wait_until(lambda: ended(faulty, 2), 10)
    assert [f.text for f in faulty.of(TTSTextFrame)][-2:] == ["Still", "here."]
    for call in calls:
        call.close()
        assert call.end_reason == "ended" and not call.failed
    for out in outs:
        out.frames.clear()
    assert wait_until(lambda: runtime.pool.in_use == 0)


@pytest.fixture
def deepgram():
    server = FakeDeepgram(["turn", "on", "the", "lights"], final_after=0.3)
    yield server
    server.close()


def speak(call, seconds: float) -> None:
    audio = tone(seconds, 16000)
    for i in range(0, len(audio), 640):
        call.push_audio(audio[i : i + 640], 16000)


def finals(out: Recorder) -> list[str]:
    return [f.text for f in out.of(TranscriptionFrame) if type(f) is TranscriptionFrame]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("stall", "no reply from the STT for 0.3 s"),
        ("garbage", "a message that is not JSON"),
        ("drop", "the STT connection closed: NET-0000 internal error"),
    ],
    ids=["stall", "garbage", "closed-mid-stream"],
)
def test_an_stt_fault_fails_only_its_own_call_s_words(runtime, deepgram, mode, expected):
    stt = lambda: DeepgramSTTService(  # noqa: E731
        url=deepgram.url + "/v1/listen",
        api_key="dg-key-777",
        retry=FAST,
        stall_timeout=0.3,
        keepalive_secs=60,
    )
    faulty, *healthy = outs = [Recorder() for _ in range(1 + HEALTHY)]
    deepgram.mode = mode
    calls = [runtime.open_call(Pipeline([stt]), faulty)]
    speak(calls[0], 0.2)
    assert deepgram.wait_for(lambda: deepgram.connections == 1)  # it took the fault
    deepgram.mode = "normal"
    calls += [runtime.open_call(Pipeline([stt]), out) for out in healthy]
    for call in calls[1:]:
        speak(call, 0.4)

    assert wait_until(lambda: errors(faulty), 10)
    [error] = errors(faulty)
    assert error.error.startswith(f"{error.processor}: ") and expected in error.error
    assert not error.fatal and "Traceback" not in error.error
    for out in healthy:
        assert wait_until(lambda out=out: finals(out) == ["turn on the lights"], 10)
    speak(calls[0], 0.4)  # the faulty call is heard again (on a new connection if need be)
    assert wait_until(lambda: "turn on the lights" in finals(faulty), 10)
    for call in calls:
        call.close()
        assert call.end_reason == "ended" and not call.failed
    assert [len(errors(out)) for out in outs] == [1] + [0] * HEALTHY
    for out in outs:
        out.frames.clear()
    assert wait_until(lambda: runtime.pool.in_use == 0)
