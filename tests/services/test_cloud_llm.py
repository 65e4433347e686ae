"""LLM services against local servers speaking the OpenAI chat completions and Anthropic
Messages streaming formats, through real pipelines: tokens as they arrive, interruptions
that close the stream, function calls (single, parallel, malformed, cancelled or kept on
an interruption), and every bad input: garbage, a close mid-stream, a stall, 429."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fake_providers import (
    Recorder,
    anthropic_events,
    errors,
    openai_chunks,
    sse_handler,
    status_handler,
    texts,
)
from helpers import wait_until

from flowcat_ft import (
    Direction,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    Pipeline,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.services.aggregators import LLMContextAggregatorPair
from flowcat_ft.services.llm import AnthropicLLMService, OpenAILLMService
from flowcat_ft.services.llm.anthropic import MessagesStreamDecoder, to_anthropic
from flowcat_ft.services.llm.base import LLMProtocolError, LLMProviderError
from flowcat_ft.services.llm.frames import (
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    LLMMessagesFrame,
    TTSSpeakFrame,
)
from flowcat_ft.services.llm.openai import ChatStreamDecoder
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.tools import ToolRegistry

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
TIMEOUTS = Timeouts(connect=1.0, head=1.0, read=0.3)
CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


def openai_llm(http, **kwargs):
    options = {"retry": FAST, "timeouts": TIMEOUTS, **kwargs}
    return lambda: OpenAILLMService(
        model="fake-model", base_url=http.url + "/v1", api_key="sk-test-123456", **options
    )


def ended(out: Recorder, n: int = 1) -> bool:
    return len(out.of(LLMFullResponseEndFrame)) >= n


# -- the Sans-I/O decoders -----------------------------------------------------------------------


def test_the_openai_decoder_assembles_text_tool_calls_and_usage():
    decoder = ChatStreamDecoder()
    calls = [{"id": "c1", "name": "f", "arguments": '{"a": 1}'}]
    out = []
    for event in openai_chunks(["He", "llo"], tool_calls=calls, usage=(3, 4)):
        out += decoder.feed(event.removeprefix("data: ").strip())
    done = decoder.finish()
    assert [d.text for d in out] == ["He", "llo"] and done.text == "Hello"
    assert [(c.id, c.name, c.arguments) for c in done.tool_calls] == [("c1", "f", '{"a": 1}')]
    assert (done.prompt_tokens, done.completion_tokens, done.finish_reason) == (3, 4, "tool_calls")
    with pytest.raises(LLMProtocolError):
        ChatStreamDecoder().feed("{garbage")
    with pytest.raises(LLMProviderError, match="overloaded"):
        ChatStreamDecoder().feed('{"error": {"message": "overloaded"}}')
    with pytest.raises(LLMProtocolError, match="ended before"):
        ChatStreamDecoder().finish()


def test_the_anthropic_decoder_and_message_conversion():
    decoder = MessagesStreamDecoder()
    out = []
    uses = [{"id": "tu1", "name": "f", "arguments": '{"city": "Oslo"}'}]
    for block in anthropic_events(["Hi", "!"], tool_uses=uses):
        name = block.split("\n")[0].removeprefix("event: ")
        data = block.split("\n")[1].removeprefix("data: ")
        out += decoder.feed(name, data)
    done = decoder.finish()
    assert [d.text for d in out] == ["Hi", "!"]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in done.tool_calls] == [
        ("tu1", "f", {"city": "Oslo"})
    ]
    assert (done.prompt_tokens, done.completion_tokens) == (12, 7)
    system, messages = to_anthropic(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "w", "arguments": '{"c": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": '{"sunny": true}'},
            {"role": "assistant", "content": "Sunny."},
        ]
    )
    assert system == "Be brief."
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"][0] == {
        "type": "tool_use",
        "id": "t1",
        "name": "w",
        "input": {"c": 1},
    }
    assert messages[2]["content"][0]["type"] == "tool_result"


# -- streaming ---------------------------------------------------------------------------------


def test_tokens_go_downstream_as_they_arrive(runtime, http):
    http.routes[CHAT] = sse_handler(openai_chunks(["Hello", " there", ",", " friend"]), delay=0.1)
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_llm(http)]), out)
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: texts(out))
    assert http.events_sent < 6  # the first token is out before the stream is
    assert wait_until(lambda: ended(out))
    assert texts(out) == ["Hello", " there", ",", " friend"]
    kinds = [
        type(f)
        for f, _ in out.frames
        if isinstance(f, LLMTextFrame | LLMFullResponseEndFrame | LLMFullResponseStartFrame)
    ]
    assert kinds[0] is LLMFullResponseStartFrame and kinds[-1] is LLMFullResponseEndFrame
    request = http.requests[0]
    assert request.headers["authorization"] == "Bearer sk-test-123456"
    body = request.json()
    assert body["model"] == "fake-model" and body["stream"] is True and body["messages"] == USER
    assert body["stream_options"] == {"include_usage": True}
    service = call.processors[0]
    assert wait_until(lambda: service.usage["completion_tokens"] == 5)
    assert service.ttfb.count == 1
    call.close()


def test_a_local_server_is_configuration_and_needs_no_key(runtime, http):
    http.routes[CHAT] = sse_handler(openai_chunks(["ok"]))
    out = Recorder()
    llm = lambda: OpenAILLMService(model="llama3", provider="ollama", base_url=http.url + "/v1")  # noqa: E731
    call = runtime.open_call(Pipeline([llm]), out)
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: ended(out))
    assert texts(out) == ["ok"] and "authorization" not in http.requests[0].headers
    call.close()


def test_an_interruption_closes_the_stream(runtime, http):
    http.routes[CHAT] = sse_handler(openai_chunks([f" w{i}" for i in range(40)]), delay=0.05)
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_llm(http)]), out)
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: len(texts(out)) >= 3)
    call.interrupt()
    assert http.wait_for(lambda: http.disconnects == 1, timeout=3)  # the provider saw us go
    sent = http.events_sent
    # The server's side of the connection is done: it can send nothing more.
    assert http.wait_for(lambda: http.connections_closed == 1, timeout=3)
    assert http.events_sent <= sent + 1 < 40
    call.close()  # the EndFrame waits for the stream's task: all it pushed is out by now
    assert call.end_reason == "ended"
    frames = [f for f, _ in out.frames]
    cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    assert not [f for f in frames[cut:] if isinstance(f, LLMTextFrame)]
    assert not errors(out)  # a cancelled stream is not an error


# -- function calls ----------------------------------------------------------------------------


def weather_tools(log: list, delay: float = 0.2) -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool(
        description="The weather in a city",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    )
    async def get_weather(args):
        log.append(("start", args["city"], time.monotonic()))
        await asyncio.sleep(delay)
        return {"city": args["city"], "forecast": "sunny"}

    return tools


def test_parallel_function_calls_run_together_and_their_results_go_back(runtime, http):
    calls = [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_2", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
    ]
    http.routes[CHAT] = [
        sse_handler(openai_chunks(["Let me check."], tool_calls=calls)),
        sse_handler(openai_chunks(["Sunny in both."])),
    ]
    log: list = []
    pair = LLMContextAggregatorPair(system_prompt="You are helpful.")
    out = Recorder()
    llm = openai_llm(http, tools=weather_tools(log))
    call = runtime.open_call(Pipeline([pair.user, llm]), out)
    call.push(UserStartedSpeakingFrame())
    call.push(TranscriptionFrame("weather in Paris and Oslo?"))
    call.push(UserStoppedSpeakingFrame())
    assert wait_until(lambda: ended(out))
    assert (
        "".join(texts(out)) == "Let me check.Sunny in both."
    )  # one response: the bot kept the turn
    assert len(out.of(LLMFullResponseStartFrame)) == 1
    starts = [t for _, _, t in log]
    assert len(starts) == 2 and abs(starts[0] - starts[1]) < 0.1  # in parallel
    results = out.of(FunctionCallResultFrame, Direction.DOWNSTREAM)
    assert sorted(r.tool_call_id for r in results) == ["call_1", "call_2"]
    assert len(out.of(FunctionCallInProgressFrame)) == 2
    first, second = (r.json() for r in http.requests)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "weather in Paris and Oslo?"},
    ]
    fed_back = second["messages"][2:]
    assert fed_back[0]["role"] == "assistant" and len(fed_back[0]["tool_calls"]) == 2
    assert [m["tool_call_id"] for m in fed_back[1:]] == ["call_1", "call_2"]
    assert json.loads(fed_back[1]["content"]) == {"city": "Paris", "forecast": "sunny"}
    context = call.processors[0].context
    assert wait_until(lambda: "IN_PROGRESS" not in json.dumps(context.messages))
    roles = [m["role"] for m in context.messages]
    assert roles == ["system", "user", "assistant", "tool", "tool"]
    call.close()


def test_a_malformed_call_gets_an_error_and_a_fallback_while_the_others_go_on(runtime, http):
    calls = [
        {"id": "good", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"id": "cut", "name": "get_weather", "arguments": '{"city": "Ro'},
        {"id": "wrong", "name": "get_weather", "arguments": '{"town": 3}'},
        {"id": "ghost", "name": "launch_rockets", "arguments": "{}"},
    ]
    http.routes[CHAT] = [
        sse_handler(openai_chunks([], tool_calls=calls)),
        sse_handler(openai_chunks(["Rome is sunny."])),
    ]
    log: list = []
    out = Recorder()
    llm = openai_llm(http, tools=weather_tools(log, 0.01), tool_error_text="One moment.")
    call = runtime.open_call(Pipeline([llm]), out)
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: ended(out))
    results = {r.tool_call_id: r for r in out.of(FunctionCallResultFrame, Direction.DOWNSTREAM)}
    assert results["good"].error is None and results["good"].result["forecast"] == "sunny"
    assert "not valid JSON" in results["cut"].error
    assert "city is required" in results["wrong"].error
    assert "unknown function" in results["ghost"].error
    messages = [e.error for e in errors(out)]
    assert len(messages) == 3 and all(not e.fatal for e in errors(out))
    assert len(out.of(TTSSpeakFrame)) == 3  # the configured fallback
    fed_back = http.requests[1].json()["messages"]
    tool_messages = {m["tool_call_id"]: m["content"] for m in fed_back if m["role"] == "tool"}
    assert "error" in json.loads(tool_messages["cut"])
    assert fed_back[1]["tool_calls"][1]["function"]["arguments"] == "{}"  # sanitised
    assert texts(out) == ["Rome is sunny."]
    call.close()


def test_an_interruption_cancels_marked_calls_and_lets_the_others_finish(runtime, http):
    calls = [
        {"id": "slow", "name": "search", "arguments": "{}"},
        {"id": "kept", "name": "book", "arguments": "{}"},
    ]
    http.routes[CHAT] = sse_handler(openai_chunks([], tool_calls=calls))
    tools = ToolRegistry()
    finished = []

    async def search(args):
        await asyncio.sleep(5)

    async def book(args):
        await asyncio.sleep(0.3)
        finished.append("book")
        return {"booked": True}

    tools.register("search", search)
    tools.register("book", book, cancel_on_interruption=False)
    pair = LLMContextAggregatorPair()
    out = Recorder()
    call = runtime.open_call(Pipeline([pair.user, openai_llm(http, tools=tools)]), out)
    call.push(TranscriptionFrame("book it"))
    assert wait_until(lambda: len(out.of(FunctionCallInProgressFrame)) == 2)
    call.interrupt()
    assert wait_until(lambda: out.of(FunctionCallCancelFrame))
    assert [f.tool_call_id for f in out.of(FunctionCallCancelFrame)] == ["slow"]
    assert wait_until(lambda: finished == ["book"])
    context = call.processors[0].context
    assert wait_until(lambda: "IN_PROGRESS" not in json.dumps(context.messages))
    results = {
        m["tool_call_id"]: json.loads(m["content"]) for m in context.messages if m["role"] == "tool"
    }
    assert results["kept"] == {"booked": True}  # recorded though the turn was cut
    assert "cancelled" in results["slow"]["error"]
    call.close()  # the EndFrame waits for any request to the model in flight
    assert call.end_reason == "ended"
    assert len(http.requests) == 1  # the model was not asked again after the interruption


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (sse_handler(["data: {this is not json\n\n"]), "not JSON"),
        (
            sse_handler(openai_chunks(["a", "b", "c"]), cut_after=2),
            "broke off mid-body",
        ),
        (sse_handler(openai_chunks(["a", "b", "c"]), stall_after=2), "HTTPTimeoutError"),
        (sse_handler(['data: {"error": {"message": "model overloaded"}}\n\n']), "overloaded"),
        (status_handler(429), "429"),
        (status_handler(500, {"error": {"message": "boom"}}), "boom"),
    ],
    ids=["garbage", "closed-mid-stream", "stall", "error-event", "429-exhausted", "500"],
)
def test_bad_input_ends_the_response_with_an_error_and_a_fallback(runtime, http, handler, expected):
    http.routes[CHAT] = [handler, sse_handler(openai_chunks(["Back again."]))]
    out = Recorder()
    llm = openai_llm(http, fallback_text="Sorry, give me a moment.", retry=RetryPolicy(attempts=1))
    call = runtime.open_call(Pipeline([llm]), out)
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: ended(out))
    [error] = errors(out)
    assert expected in error.error and not error.fatal
    assert [f.text for f in out.of(TTSSpeakFrame)] == ["Sorry, give me a moment."]
    call.push(LLMMessagesFrame(USER))  # the call goes on
    assert wait_until(lambda: ended(out, 2))
    assert texts(out)[-1] == "Back again."
    call.close()
    assert call.end_reason == "ended" and not call.failed


def test_a_429_is_retried_after_the_wait_it_asks_for(runtime, http):
    http.routes[CHAT] = [
        status_handler(429, headers={"Retry-After": "1"}),
        sse_handler(openai_chunks(["made it"])),
    ]
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_llm(http)]), out)
    start = time.monotonic()
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: ended(out))
    assert texts(out) == ["made it"] and not errors(out)
    assert time.monotonic() - start >= 0.95
    service = call.processors[0]
    assert wait_until(lambda: service.usage["retries"] == 1)
    call.close()


# -- Anthropic -----------------------------------------------------------------------------------


def anthropic_llm(http, **kwargs):
    return lambda: AnthropicLLMService(
        model="claude-fake",
        base_url=http.url,
        api_key="sk-ant-test-1234",
        retry=FAST,
        timeouts=TIMEOUTS,
        **kwargs,
    )


def test_anthropic_streams_text_and_runs_tool_use(runtime, http):
    uses = [{"id": "toolu_1", "name": "get_weather", "arguments": '{"city": "Lima"}'}]
    http.routes["/v1/messages"] = [
        sse_handler(anthropic_events(["Checking", "..."], tool_uses=uses), delay=0.02),
        sse_handler(anthropic_events(["Lima is sunny."])),
    ]
    log: list = []
    pair = LLMContextAggregatorPair(system_prompt="Be brief.")
    out = Recorder()
    call = runtime.open_call(
        Pipeline([pair.user, anthropic_llm(http, tools=weather_tools(log, 0.01))]), out
    )
    call.push(TranscriptionFrame("weather in Lima?"))
    assert wait_until(lambda: ended(out))
    assert texts(out) == ["Checking", "...", "Lima is sunny."]
    first, second = http.requests
    assert first.headers["x-api-key"] == "sk-ant-test-1234"
    assert first.headers["anthropic-version"] == "2023-06-01"
    body = first.json()
    assert body["system"] == "Be brief." and body["stream"] is True
    assert body["tools"][0]["input_schema"]["required"] == ["city"]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Lima?"}]}
    ]
    fed_back = second.json()["messages"]
    assert fed_back[1]["content"][-1]["type"] == "tool_use"
    assert fed_back[2]["content"][0]["tool_use_id"] == "toolu_1"
    call.close()


def test_anthropic_error_events_are_reported(runtime, http):
    error = {"type": "overloaded_error", "message": "Overloaded"}
    http.routes["/v1/messages"] = sse_handler(anthropic_events(["Hel"], error=error))
    out = Recorder()
    call = runtime.open_call(Pipeline([anthropic_llm(http)]), out)
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: ended(out))
    [reported] = errors(out)
    assert "overloaded_error" in reported.error and "Overloaded" in reported.error
    call.close()


def test_each_response_reports_its_metrics(runtime, http):
    from flowcat_ft.frames import MetricsFrame

    http.routes[CHAT] = sse_handler(openai_chunks(["ok"], usage=(30, 2)))
    out = Recorder()
    call = runtime.open_call(Pipeline([openai_llm(http)]), out)
    call.push(LLMMessagesFrame(USER))
    assert wait_until(lambda: out.of(MetricsFrame))
    [metrics] = out.of(MetricsFrame)
    assert metrics.processor == "OpenAILLMService"
    assert metrics.data["prompt_tokens"] == 30 and metrics.data["completion_tokens"] == 2
    assert metrics.data["requests"] == 1 and metrics.data["ttfb_ms"] > 0
    call.close()


def test_tool_runs_report_every_failure_as_a_result():
    from flowcat_ft.services.tools import ToolCall

    tools = ToolRegistry()
    tools.register(
        "add",
        lambda args: args["a"] + args["b"],
        parameters={
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    )

    async def slow(args):
        await asyncio.sleep(1)

    def broken(args):
        raise RuntimeError("database down")

    tools.register("slow", slow, timeout=0.05)
    tools.register("broken", broken)

    async def run(name, arguments):
        return await tools.run(ToolCall("c", name, arguments))

    assert asyncio.run(run("add", '{"a": 2, "b": 3}')).result == 5  # a plain function, threaded
    assert "is not an allowed property" in asyncio.run(run("add", '{"a": 1, "b": 2, "c": 3}')).error
    assert "should be integer" in asyncio.run(run("add", '{"a": "1", "b": 2}')).error
    assert "timed out" in asyncio.run(run("slow", "{}")).error
    assert "database down" in asyncio.run(run("broken", "")).error
    assert tools.schemas("anthropic")[0]["input_schema"]["required"] == ["a", "b"]


def test_the_context_keeps_tool_results_next_to_their_calls_and_forks_cleanly():
    from flowcat_ft.services.context import IN_PROGRESS, LLMContext

    context = LLMContext(system_prompt="sys")
    context.add_user_message("hi")
    context.add_tool_calls([{"id": "t1", "name": "f", "arguments": {"x": 1}}])
    fork = context.fork()
    context.add_user_message("later")
    assert context.set_tool_result("t1", {"ok": True})
    assert [m["role"] for m in context.messages] == ["system", "user", "assistant", "tool", "user"]
    assert context.messages[3]["content"] == '{"ok": true}'
    assert fork.messages[3]["content"] == IN_PROGRESS and len(fork) == 4  # untouched
    assert context.messages[2]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'
    context.system_prompt = "new"
    assert context.system_prompt == "new" and not context.set_tool_result("nope", 1)
