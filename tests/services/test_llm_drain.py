"""The end of a call while the LLM is still answering: the reply is finished and spoken
before the EndFrame goes on (a cloud LLM streaming into a TTS, function calls in flight,
the offline graph with a slow tool), an interruption still cuts it, and a CancelFrame
still drops it at once."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fake_providers import FakeCartesia, Recorder, openai_chunks, sse_handler
from helpers import wait_until

from flowcat_ft import (
    Direction,
    EndFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    MetricsFrame,
    Pipeline,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from flowcat_ft.services.llm import OpenAILLMService
from flowcat_ft.services.llm.frames import FunctionCallResultFrame, LLMMessagesFrame
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.offline.graph import ConversationGraph, GraphLLM
from flowcat_ft.services.tools import ToolRegistry
from flowcat_ft.services.tts import CartesiaTTSService

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
CHAT = "/v1/chat/completions"
REPLY = "One two three. Four five six seven. Eight nine ten eleven twelve."
TOKENS = [w if not i else " " + w for i, w in enumerate(REPLY.split())]
WORDS = REPLY.split()
WORD_SECS = 0.05


@pytest.fixture
def cartesia():
    server = FakeCartesia(word_secs=WORD_SECS, chunk_secs=0.05, delay=0.01)
    yield server
    server.close()


def llm_to_tts(runtime, http, cartesia, delay=0.05):
    """A call whose LLM streams ``REPLY`` a token every ``delay`` seconds into a TTS."""
    http.routes[CHAT] = sse_handler(openai_chunks(TOKENS), delay=delay)
    llm = lambda: OpenAILLMService(  # noqa: E731
        model="fake-model", base_url=http.url + "/v1", api_key="sk-test", retry=FAST
    )
    tts = lambda: CartesiaTTSService(  # noqa: E731
        voice_id="voice-1", url=cartesia.url, api_key="ck-test", sample_rate=24000, retry=FAST
    )
    out = Recorder()
    call = runtime.open_call(Pipeline([llm, tts]), out)
    call.push(LLMMessagesFrame([{"role": "user", "content": "count"}]))
    assert http.wait_for(lambda: http.events_sent >= 3)  # the reply has started streaming
    return call, out


def downstream(out: Recorder) -> list:
    return [f for f, d in list(out.frames) if d is Direction.DOWNSTREAM]


def audio_secs(out: Recorder) -> float:
    return sum(f.num_frames / f.sample_rate for f in out.of(TTSAudioRawFrame))


def spoken(cartesia: FakeCartesia) -> str:
    return " ".join(r["transcript"] for r in cartesia.requests if r.get("transcript"))


def test_an_end_waits_for_the_llm_to_finish_streaming_and_the_tts_to_say_it(
    runtime, http, cartesia
):
    call, out = llm_to_tts(runtime, http, cartesia)
    call.end()
    assert call.wait(10) and call.end_reason == "ended"
    assert http.events_sent == len(openai_chunks(TOKENS))  # the stream was not cut
    assert spoken(cartesia).split() == WORDS  # every token reached the TTS
    assert [f.text for f in out.of(TTSTextFrame)] == WORDS
    assert audio_secs(out) == pytest.approx(len(WORDS) * WORD_SECS, abs=0.02)
    frames = [f for f in downstream(out) if not isinstance(f, MetricsFrame)]
    assert [type(f) for f in frames[-3:]] == [TTSStoppedFrame, LLMFullResponseEndFrame, EndFrame]
    assert not out.of(ErrorFrame)


def test_an_interruption_while_the_call_ends_cuts_the_llm_reply(runtime, http, cartesia):
    call, out = llm_to_tts(runtime, http, cartesia, delay=0.2)
    call.end()
    assert wait_until(lambda: out.of(TTSAudioRawFrame))
    call.interrupt()
    assert call.wait(10) and call.end_reason == "ended"
    assert http.wait_for(lambda: http.disconnects == 1)  # the LLM closed its stream
    assert http.events_sent < len(openai_chunks(TOKENS))
    assert len(out.of(TTSTextFrame)) < len(WORDS)
    frames = downstream(out)
    cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    assert not [f for f in frames[cut:] if isinstance(f, TTSAudioRawFrame | TTSTextFrame)]
    assert isinstance(frames[-1], EndFrame)
    assert not out.of(ErrorFrame)


def test_a_cancel_while_the_call_ends_drops_the_llm_reply_at_once(runtime, http, cartesia):
    call, out = llm_to_tts(runtime, http, cartesia, delay=0.2)
    call.end()
    call.cancel("hung up")
    assert call.wait(5) and call.end_reason == "hung up"
    assert http.wait_for(lambda: http.disconnects == 1)
    assert http.events_sent < len(openai_chunks(TOKENS))
    assert len(out.of(TTSTextFrame)) < len(WORDS) and not out.of(EndFrame)


def test_an_end_lets_function_calls_in_flight_finish_and_the_model_answer(runtime, http):
    calls = [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}]
    http.routes[CHAT] = [
        sse_handler(openai_chunks(["Let me check."], tool_calls=calls)),
        sse_handler(openai_chunks(["Sunny", " in Oslo."]), delay=0.05),
    ]
    started = threading.Event()
    tools = ToolRegistry()

    @tools.tool(description="The weather in a city")
    async def get_weather(args):
        started.set()
        await asyncio.sleep(0.2)
        return {"forecast": "sunny"}

    llm = lambda: OpenAILLMService(  # noqa: E731
        model="fake-model", provider="vllm", base_url=http.url + "/v1", retry=FAST, tools=tools
    )
    out = Recorder()
    call = runtime.open_call(Pipeline([llm]), out)
    call.push(LLMMessagesFrame([{"role": "user", "content": "weather?"}]))
    assert started.wait(5)
    call.end()
    assert call.wait(10) and call.end_reason == "ended"
    frames = [f for f in downstream(out) if not isinstance(f, MetricsFrame)]
    texts = [f.text for f in frames if isinstance(f, LLMTextFrame)]
    assert texts == ["Let me check.", "Sunny", " in Oslo."]
    assert out.of(FunctionCallResultFrame, Direction.UPSTREAM)[0].result == {"forecast": "sunny"}
    assert [type(f) for f in frames[-2:]] == [LLMFullResponseEndFrame, EndFrame]


GRAPH = """\
start: welcome
slots:
  city: Paris
nodes:
  welcome:
  forecast:
    tool: forecast
    reply: "{forecast} in {city}."
  time:
    tool: clock
    reply: "It is {clock}."
edges:
  - to: forecast
    keywords: [forecast]
  - to: time
    keywords: [time]
"""


def slow_graph(secs: float) -> ConversationGraph:
    """The graph, with tools that take ``secs`` seconds."""

    async def forecast(slots):
        await asyncio.sleep(secs)
        return {"city": "London", "forecast": "Fog"}

    async def clock(slots):
        await asyncio.sleep(secs)
        return "noon"

    return ConversationGraph.from_yaml(GRAPH, "agent.yaml", {"forecast": forecast, "clock": clock})


def test_an_end_waits_for_the_graph_replies_being_made_and_queued(runtime):
    out = Recorder()
    call = runtime.open_call(Pipeline([lambda: GraphLLM(slow_graph(0.1))]), out)
    call.push(TranscriptionFrame("forecast"))  # its tool is still running at the end...
    call.push(TranscriptionFrame("time"))  # ...and this reply waits for it
    call.end()
    assert call.wait(10) and call.end_reason == "ended"
    frames = downstream(out)
    assert [f.text for f in frames if type(f) is LLMTextFrame] == ["Fog in London.", "It is noon."]
    assert type(frames[-2]) is LLMFullResponseEndFrame and type(frames[-1]) is EndFrame


def test_an_interruption_while_the_call_ends_drops_the_graph_replies(runtime):
    out = Recorder()
    call = runtime.open_call(Pipeline([lambda: GraphLLM(slow_graph(3600))]), out)
    call.push(TranscriptionFrame("forecast"))
    call.push(TranscriptionFrame("time"))
    assert wait_until(lambda: len(out.of(TranscriptionFrame)) == 2)  # both heard
    call.end()
    call.interrupt()
    assert call.wait(10) and call.end_reason == "ended"
    frames = downstream(out)
    assert isinstance(frames[-1], EndFrame) and not out.of(LLMTextFrame)
