"""Speech to speech against a local server speaking the OpenAI Realtime protocol: the
session, caller audio up (resampled to 24 kHz), bot audio down in slabs, transcripts,
function calls, a barge-in that cancels and truncates, and error events."""

from __future__ import annotations

import json

import pytest
from fake_providers import FakeRealtime, Recorder, tone
from helpers import wait_until

from flowcat_ft import (
    Direction,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    Pipeline,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.services.llm.frames import FunctionCallResultFrame
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.s2s import OpenAIRealtimeService
from flowcat_ft.services.s2s.openai_realtime import heard_part, message_item, parse_event
from flowcat_ft.services.tools import ToolRegistry

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def realtime():
    server = FakeRealtime(chunks=10, chunk_secs=0.1)
    yield server
    server.close()


def service(server, **kwargs):
    return lambda: OpenAIRealtimeService(
        url=server.url + "/v1/realtime",
        api_key="sk-rt-2468",
        instructions="Be kind.",
        voice="verse",
        retry=FAST,
        **kwargs,
    )


def speak(call, seconds=0.3):
    audio = tone(seconds, 16000)
    for i in range(0, len(audio), 640):
        call.push_audio(audio[i : i + 640], 16000)


def audio_secs(out):
    return sum(f.num_frames / f.sample_rate for f in out.of(TTSAudioRawFrame))


def test_a_spoken_turn_and_the_answer(runtime, realtime):
    out = Recorder()
    call = runtime.open_call(Pipeline([service(realtime)]), out)
    speak(call)
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    session = realtime.of_type("session.update")[0]["session"]
    assert session["instructions"] == "Be kind." and session["voice"] == "verse"
    assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
    assert session["turn_detection"] == {"type": "server_vad"}
    handshake = realtime.handshakes[0]
    assert handshake["authorization"] == "Bearer sk-rt-2468"
    assert handshake["openai-beta"] == "realtime=v1"
    assert "model=" in handshake["path"]
    assert realtime.wait_for(lambda: abs(realtime.audio_bytes - 0.3 * 24000 * 2) < 200)
    for kind in (
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
    ):
        assert out.of(kind), kind
    assert [f.text for f in out.of(TranscriptionFrame)] == ["what is the weather"]
    assert {f.sample_rate for f in out.of(TTSAudioRawFrame)} == {16000}
    assert audio_secs(out) == pytest.approx(1.0, abs=0.01)
    assert "".join(f.text for f in out.of(TTSTextFrame)).split() == [f"word{i}" for i in range(10)]
    svc = call.processors[0]
    assert wait_until(lambda: svc.usage["output_tokens"] == 40)
    call.close()


def test_a_barge_in_cancels_the_response_and_truncates_at_what_was_played(runtime, realtime):
    realtime.delay = 0.05
    out = Recorder()
    call = runtime.open_call(Pipeline([service(realtime)]), out)
    speak(call)
    assert wait_until(lambda: len(out.of(TTSAudioRawFrame)) >= 3)
    call.interrupt()
    assert realtime.wait_for(lambda: realtime.of_type("conversation.item.truncate"))
    [cut] = realtime.of_type("conversation.item.truncate")
    assert cut["item_id"] == "item_1" and cut["content_index"] == 0
    sent_ms = audio_secs(out) * 1000
    assert 0 <= cut["audio_end_ms"] <= sent_ms + 1
    assert realtime.of_type("response.cancel")
    # The server may hear the truncate before the interruption has left the pipeline.
    assert wait_until(lambda: out.of(InterruptionFrame))
    frames = [f for f, _ in out.frames]
    index = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    assert not [f for f in frames[index:] if isinstance(f, TTSAudioRawFrame)]
    assert not out.of(ErrorFrame, Direction.UPSTREAM)
    call.close()


def test_function_calls_are_answered_and_the_model_goes_on(runtime, realtime):
    realtime.function_call = {
        "call_id": "call_9",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    tools = ToolRegistry()

    async def get_weather(args):
        return {"city": args["city"], "forecast": "rain"}

    tools.register(
        "get_weather",
        get_weather,
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    )
    out = Recorder()
    call = runtime.open_call(Pipeline([service(realtime, tools=tools)]), out)
    speak(call)
    assert wait_until(lambda: len(out.of(LLMFullResponseEndFrame)) == 2)
    assert realtime.of_type("session.update")[0]["session"]["tools"][0]["name"] == "get_weather"
    [created] = realtime.of_type("conversation.item.create")
    assert created["item"]["type"] == "function_call_output"
    assert created["item"]["call_id"] == "call_9"
    assert json.loads(created["item"]["output"]) == {"city": "Paris", "forecast": "rain"}
    assert realtime.of_type("response.create")
    [result] = out.of(FunctionCallResultFrame)
    assert result.result == {"city": "Paris", "forecast": "rain"}
    assert audio_secs(out) == pytest.approx(1.0, abs=0.01)  # the answer after the call
    call.close()


def test_error_events_and_garbage_are_reported_and_the_session_goes_on(runtime, realtime):
    realtime.send_error = True
    realtime.send_garbage = True
    out = Recorder()
    call = runtime.open_call(Pipeline([service(realtime)]), out)
    speak(call)
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    reported = [e.error for e in out.of(ErrorFrame, Direction.UPSTREAM)]
    assert len(reported) == 2
    assert any("bad voice" in e for e in reported) and any("not JSON" in e for e in reported)
    assert audio_secs(out) == pytest.approx(1.0, abs=0.01)
    call.close()


def session_events(server, index):
    """The events of the ``index``-th session (each starts with its session.update)."""
    starts = [i for i, e in enumerate(server.events) if e["type"] == "session.update"]
    starts.append(len(server.events))
    return server.events[starts[index] : starts[index + 1]]


def test_a_dropped_connection_is_reopened_and_the_conversation_re_sent(runtime, realtime):
    out = Recorder()
    call = runtime.open_call(Pipeline([service(realtime)]), out)
    speak(call)
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    realtime.drop()
    assert wait_until(lambda: out.of(ErrorFrame, Direction.UPSTREAM))
    [error] = out.of(ErrorFrame, Direction.UPSTREAM)
    assert "connection closed" in error.error and "1011" in error.error and not error.fatal
    assert realtime.wait_for(lambda: realtime.connections == 2)
    assert realtime.wait_for(lambda: len(realtime.of_type("conversation.item.create")) == 2)
    update, *created = session_events(realtime, 1)
    assert update["session"] == session_events(realtime, 0)[0]["session"]
    assert [e["item"] for e in created] == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "what is the weather"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": " ".join(f"word{i}" for i in range(10))}],
        },
    ]
    speak(call)  # the new session hears the caller and answers
    assert wait_until(lambda: len(out.of(LLMFullResponseEndFrame)) == 2)
    assert audio_secs(out) == pytest.approx(2.0, abs=0.02)
    call.close()
    assert call.end_reason == "ended"


def test_a_barge_in_keeps_only_the_words_heard_for_the_next_session(runtime, realtime):
    realtime.delay = 0.05
    out = Recorder()
    call = runtime.open_call(Pipeline([service(realtime)]), out)
    speak(call)
    assert wait_until(lambda: len(out.of(TTSAudioRawFrame)) >= 3)
    call.interrupt()
    assert realtime.wait_for(lambda: realtime.of_type("conversation.item.truncate"))
    realtime.drop()
    assert realtime.wait_for(lambda: len(realtime.of_type("conversation.item.create")) >= 1)
    _, *created = session_events(realtime, 1)
    said = [e["item"]["content"][0]["text"] for e in created if e["item"]["role"] == "assistant"]
    heard = said[0].split() if said else []
    assert len(heard) < 10 and heard == [f"word{i}" for i in range(len(heard))]
    call.close()


def test_a_connection_that_cannot_be_reopened_ends_the_call(runtime, realtime):
    out = Recorder()
    call = runtime.open_call(Pipeline([service(realtime)]), out)
    assert realtime.wait_for(lambda: realtime.of_type("session.update"))
    realtime.reject.extend([(503, {})] * 3)  # every attempt FAST allows
    realtime.drop()
    assert call.wait(5)
    closed, gave_up = out.of(ErrorFrame, Direction.UPSTREAM)
    assert "connection closed" in closed.error and not closed.fatal
    assert "could not connect" in gave_up.error and "503" in gave_up.error and gave_up.fatal
    assert call.end_reason.startswith("fatal error")


def test_turns_driven_by_our_own_vad(runtime, realtime):
    out = Recorder()
    call = runtime.open_call(Pipeline([service(realtime, server_vad=False)]), out)
    call.push(UserStartedSpeakingFrame())
    speak(call)
    assert realtime.wait_for(lambda: abs(realtime.audio_bytes - 0.3 * 24000 * 2) < 200)
    session = realtime.of_type("session.update")[0]["session"]
    assert session["turn_detection"] is None  # the server's VAD is off
    assert not realtime.of_type("input_audio_buffer.commit")  # nothing until we say so
    call.push(UserStoppedSpeakingFrame())
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    kinds = [e["type"] for e in realtime.events]
    commit = kinds.index("input_audio_buffer.commit")
    assert kinds[commit + 1] == "response.create"
    assert [f.text for f in out.of(TranscriptionFrame)] == ["what is the weather"]
    assert len(out.of(UserStartedSpeakingFrame)) == len(out.of(UserStoppedSpeakingFrame)) == 1
    assert audio_secs(out) == pytest.approx(1.0, abs=0.01)
    # The next turn; the caller barges in on the answer: the response is cancelled.
    realtime.delay = 0.05
    first = len(out.of(TTSAudioRawFrame))
    call.push(UserStartedSpeakingFrame())
    speak(call)
    call.push(UserStoppedSpeakingFrame())
    assert wait_until(lambda: len(out.of(TTSAudioRawFrame)) >= first + 3)
    call.interrupt()
    assert realtime.wait_for(lambda: realtime.of_type("response.cancel"))
    assert len(realtime.of_type("response.create")) == 2
    assert not out.of(ErrorFrame, Direction.UPSTREAM)
    call.close()


def test_both_names_of_the_audio_delta_event_parse():
    for kind in ("response.audio.delta", "response.output_audio.delta"):
        event = parse_event(json.dumps({"type": kind, "item_id": "i", "delta": "AAAA"}))
        assert event.audio == b"\x00\x00\x00"


def test_items_that_re_create_the_conversation():
    assert heard_part("one two three four", 500, 1000) == "one two"
    assert heard_part("one two three four", 1000, 1000) == "one two three four"
    assert heard_part("one two", 0, 1000) == heard_part("one two", 10, 0) == ""
    item = json.loads(message_item("assistant", "hi", beta=False))["item"]
    assert item["content"] == [{"type": "output_text", "text": "hi"}]
