"""A cloud agent's turns end to end, against local providers: the user's transcripts become
a user message, the LLM answers, the TTS speaks, and the context records what the caller
heard, cut at a barge-in; metrics from the end of the user's speech to the first bot
audio."""

from __future__ import annotations

import time

import pytest
from fake_providers import FakeCartesia, FakeHTTPServer, Recorder, openai_chunks, sse_handler
from helpers import wait_until

from flowcat_ft import (
    EndFrame,
    LLMFullResponseEndFrame,
    Pipeline,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.frames import InterimTranscriptionFrame
from flowcat_ft.services.agent import cloud_agent_pipeline
from flowcat_ft.services.aggregators import (
    AssistantContextAggregator,
    LLMContextAggregatorPair,
)
from flowcat_ft.services.llm import OpenAILLMService
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.tools import ToolRegistry, end_call_tool
from flowcat_ft.services.tts import CartesiaTTSService

FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)
LONG = " ".join(f"w{i}" for i in range(30)) + "."


@pytest.fixture
def providers():
    http, cartesia = FakeHTTPServer(), FakeCartesia(word_secs=0.1, chunk_secs=0.1)
    yield http, cartesia
    http.close()
    cartesia.close()


def agent(http, cartesia, tools=None, **pair_options):
    """The cloud agent without turns or STT (the tests push those frames) or a playout
    (the tests read the TTS's output as it comes)."""
    context = LLMContextAggregatorPair(system_prompt="You are a test agent.", **pair_options)
    llm = lambda: OpenAILLMService(  # noqa: E731
        model="m",
        base_url=http.url + "/v1",
        api_key="sk-agent-1",
        retry=FAST,
        timeouts=Timeouts(1, 1, 1),
        tools=tools,
    )
    tts = lambda: CartesiaTTSService(  # noqa: E731
        voice_id="v", url=cartesia.url, api_key="ck-agent-1", sample_rate=16000, retry=FAST
    )
    return cloud_agent_pipeline(llm, tts, context=context, playout=False)


def user_says(call, text):
    call.push(UserStartedSpeakingFrame())
    call.push(InterimTranscriptionFrame(text.split()[0]))
    call.push(UserStoppedSpeakingFrame())
    time.sleep(0.05)  # the final transcript lags the end of speech, as it does from an STT
    call.push(TranscriptionFrame(text))


def assistant_messages(context):
    return [m["content"] for m in context.messages if m["role"] == "assistant"]


def test_a_turn_is_heard_in_full_and_recorded(runtime, providers):
    http, cartesia = providers
    http.routes["/v1/chat/completions"] = sse_handler(openai_chunks(["Hi", " there", "."]))
    out = Recorder()
    call = runtime.open_call(agent(http, cartesia), out)
    user_says(call, "hello agent")
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    request = http.requests[0].json()
    assert request["messages"] == [
        {"role": "system", "content": "You are a test agent."},
        {"role": "user", "content": "hello agent"},
    ]
    user, assistant = call.processors[0], call.processors[-1]
    assert assistant_messages(user.context) == []  # not yet: the audio is still playing
    assert wait_until(lambda: assistant_messages(user.context) == ["Hi there."], timeout=3)
    assert assistant.response_latency.count == 1
    assert 0 < assistant.response_latency.max < 2e9
    call.close()


def test_the_model_hangs_up_after_its_goodbye_has_been_said(runtime, providers):
    http, cartesia = providers
    hang_up = {"id": "call_1", "name": "end_call", "arguments": "{}"}
    http.routes["/v1/chat/completions"] = [
        sse_handler(openai_chunks(["Goodbye", " then."], tool_calls=[hang_up])),
        sse_handler(openai_chunks([" Take care."])),  # its answer to the call's result
    ]
    out = Recorder()
    call = runtime.open_call(agent(http, cartesia, ToolRegistry([end_call_tool()])), out)
    user_says(call, "goodbye")
    assert call.wait(timeout=5), "the call did not end"
    assert call.end_reason == "ended"
    offered = http.requests[0].json()["tools"]
    assert [tool["function"]["name"] for tool in offered] == ["end_call"]
    assert http.requests[1].json()["messages"][-1]["role"] == "tool"
    # The whole reply, the answer to the call's result included, was spoken before the end.
    assert [f.text for f in out.of(TTSTextFrame)] == ["Goodbye", "then.", "Take", "care."]
    kinds = [type(f) for f, _ in out.frames]
    last_audio = max(i for i, kind in enumerate(kinds) if kind is TTSAudioRawFrame)
    assert kinds.index(EndFrame) > last_audio


def test_a_barge_in_leaves_only_the_words_heard_in_the_context(runtime, providers):
    http, cartesia = providers
    http.routes["/v1/chat/completions"] = [
        sse_handler(openai_chunks([LONG])),
        sse_handler(openai_chunks(["Sure."])),
    ]
    out = Recorder()
    call = runtime.open_call(agent(http, cartesia), out)
    user_says(call, "tell me everything")
    assert wait_until(lambda: out.of(TTSAudioRawFrame))
    # The TTS sends 3 s of audio far faster than real time; the caller hears it at 1x.
    assert wait_until(lambda: len(out.of(TTSTextFrame)) == 30)
    first_audio = time.monotonic()
    time.sleep(0.5)
    call.interrupt()
    heard_for = time.monotonic() - first_audio
    user_says(call, "stop")
    assert wait_until(lambda: len(http.requests) == 2)
    user = call.processors[0]
    [heard] = assistant_messages(user.context)[:1]
    words = heard.split()
    assert words == LONG.split()[: len(words)]  # a prefix of what was said...
    assert 3 <= len(words) <= heard_for * 10 + 2  # ...about as much as had played
    second = http.requests[1].json()["messages"]
    assert second[2] == {"role": "assistant", "content": heard}  # the LLM knows what was heard
    assert second[3] == {"role": "user", "content": "stop"}
    call.close()


def test_without_pacing_text_counts_as_heard_as_it_passes(runtime):
    from flowcat_ft import LLMFullResponseStartFrame
    from flowcat_ft.services.llm.frames import LLMMessagesAppendFrame

    out = Recorder()
    call = runtime.open_call(Pipeline([lambda: AssistantContextAggregator(paced=False)]), out)
    call.push(LLMFullResponseStartFrame())
    call.push(TTSTextFrame("Hello"))
    call.push(TTSTextFrame("world."))
    call.push(LLMFullResponseEndFrame())
    assert wait_until(lambda: out.of(LLMMessagesAppendFrame))
    [appended] = out.of(LLMMessagesAppendFrame)
    assert appended.messages == [{"role": "assistant", "content": "Hello world."}]
    call.close()


def test_transcripts_without_voice_activity_end_the_turn_after_a_pause(runtime, providers):
    http, cartesia = providers
    http.routes["/v1/chat/completions"] = sse_handler(openai_chunks(["Yes."]))
    out = Recorder()
    call = runtime.open_call(agent(http, cartesia, aggregation_timeout=0.2), out)
    call.push(TranscriptionFrame("is it"))
    call.push(TranscriptionFrame("open today"))
    assert wait_until(lambda: http.requests)
    assert http.requests[0].json()["messages"][-1] == {
        "role": "user",
        "content": "is it open today",
    }
    call.close()
