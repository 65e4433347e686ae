"""Traces of conversations, as an OpenTelemetry backend receives them: over OTLP/HTTP
(protobuf) at a local receiver. A cloud agent (turns from the energy VAD, OpenAI-style
STT, LLM and TTS against the local fake providers) answers one turn and is interrupted in
the next; its spans form the tree call → turns → stt, llm, tts, with the call's ids, time
to first byte, tokens, characters, the interruption and errors. The server exports each
call's trace where its YAML says."""

from __future__ import annotations

import asyncio
import gc
from functools import partial

import numpy as np
import pytest
import websockets
from carrier_messages import twilio_media, twilio_start
from fake_providers import (
    FakeHTTPServer,
    Recorder,
    openai_chunks,
    pcm_handler,
    sse_handler,
    status_handler,
    tone,
)
from helpers import twilio_stream_url, wait_until
from otlp_receiver import OTLPReceiver, ReceivedSpan

from flowcat_ft import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    LLMFullResponseEndFrame,
    Pipeline,
    StartFrame,
)
from flowcat_ft.audio.turns import TurnDetector
from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADParams
from flowcat_ft.server.app import AgentServer
from flowcat_ft.server.config import load_config
from flowcat_ft.services.agent import cloud_agent_pipeline
from flowcat_ft.services.aggregators import LLMContextAggregatorPair
from flowcat_ft.services.llm import OpenAILLMService
from flowcat_ft.services.llm.frames import LLMMessagesFrame
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.stt import OpenAISTTService
from flowcat_ft.services.tts import OpenAITTSService
from flowcat_ft.telemetry.export import Telemetry

FAST = RetryPolicy(attempts=1)
TIMEOUTS = Timeouts(connect=2, head=2, read=2)
RATE = 16000
FRAME = RATE // 50  # 20 ms
START = StartFrame(RATE, RATE, {"carrier": "twilio", "call_id": "CA-trace-1", "stream_id": "MZ9"})


@pytest.fixture
def receiver():
    receiver = OTLPReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def telemetry(receiver):
    telemetry = Telemetry(receiver.url, service_name="flowcat-test")
    yield telemetry
    telemetry.shutdown()


@pytest.fixture
def providers():
    server = FakeHTTPServer()
    yield server
    server.close()


def transcriptions(*texts: str):
    answers = list(texts)

    async def handle(request, reply):
        await reply.json(200, {"text": answers.pop(0)})

    return handle


def agent(server, telemetry):
    base = {"base_url": server.url + "/v1", "retry": FAST, "timeouts": TIMEOUTS}
    analyzer = partial(EnergyVADAnalyzer, params=VADParams(start_secs=0.1, stop_secs=0.1))
    return cloud_agent_pipeline(
        lambda: OpenAILLMService(model="fake-model", api_key="sk-trace-1", **base),
        lambda: OpenAITTSService(api_key="sk-trace-2", **base),
        stt=lambda: OpenAISTTService(api_key="sk-trace-3", min_secs=0.0, **base),
        turns=partial(TurnDetector, analyzer, turn_timeout_secs=0.3, min_barge_in_secs=0.2),
        context=LLMContextAggregatorPair(system_prompt="Be brief."),
        tracer=telemetry.tracer_factory(),
    )


_noise = np.random.default_rng(7)


def say(call, quiet: float = 0.0, loud: float = 0.0, after: float = 0.0) -> None:
    """Push ``quiet`` seconds of a faint noise, ``loud`` of a tone, then ``after`` of noise."""
    for seconds, level in ((quiet, 0), (loud, 8000), (after, 0)):
        n = int(seconds * RATE)
        samples = _noise.normal(0, 20, n) + level * np.sin(np.arange(n) * 2 * np.pi * 300 / RATE)
        pcm = samples.astype("<i2").tobytes()
        for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME):
            call.push_audio(pcm[i : i + 2 * FRAME], RATE)


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_id == parent.span_id), key=lambda s: s.start_ns)


def jobs_of(spans: list[ReceivedSpan], turn: ReceivedSpan) -> dict[str, ReceivedSpan]:
    jobs = {s.name: s for s in children(spans, turn)}
    assert len(jobs) == len(children(spans, turn))  # one of each kind
    return jobs


def test_a_conversation_is_one_trace_of_its_call_turns_and_jobs(
    runtime, receiver, telemetry, providers
):
    providers.routes["/v1/audio/transcriptions"] = transcriptions("what time is it", "stop")
    providers.routes["/v1/chat/completions"] = [
        sse_handler(openai_chunks(["It is", " noon."], usage=(12, 4))),
        sse_handler(openai_chunks(["Stopping."], usage=(30, 2))),
    ]
    # Speech streamed at about real time: the first reply is still being made at the barge-in.
    providers.routes["/v1/audio/speech"] = [
        pcm_handler(tone(2.0, 24000), chunk_bytes=9600, delay=0.2),
        pcm_handler(tone(0.4, 24000), chunk_bytes=9600),
    ]
    out = Recorder()
    call = runtime.open_call(agent(providers, telemetry), out, start_frame=START)
    say(call, quiet=0.4, loud=0.5, after=0.5)  # the first turn
    assert wait_until(lambda: out.of(BotStartedSpeakingFrame), timeout=10)
    say(call, loud=0.4, after=0.5)  # the caller barges in: the second turn
    # The first reply was cut off before its end; the second is heard to its end.
    assert wait_until(lambda: len(out.of(LLMFullResponseEndFrame)) == 1, timeout=10)
    assert wait_until(lambda: len(out.of(BotStoppedSpeakingFrame, Direction.DOWNSTREAM)) == 2, 10)
    call.end()
    assert call.wait(10)
    out.frames.clear()  # the recorder held the output audio's slabs
    gc.collect()
    assert wait_until(lambda: runtime.pool.in_use == 0)  # every slab came back
    telemetry.flush()
    assert receiver.wait_for(lambda spans: any(s.name == "call" for s in spans))

    spans = receiver.spans()
    assert {s.trace_id for s in spans} == {spans[0].trace_id}  # one trace
    assert receiver.content_types[0] == "application/x-protobuf"
    assert spans[0].resource["service.name"] == "flowcat-test"
    [root] = [s for s in spans if not s.parent_id]
    assert root.name == "call"
    assert root.attributes == {
        "call.id": call.id,
        "call.carrier": "twilio",
        "call.carrier_call_id": "CA-trace-1",
        "call.stream_id": "MZ9",
        "call.end_reason": "ended",
    }
    turns = sorted(
        (s for s in spans if s.name == "turn"), key=lambda s: s.attributes["turn.number"]
    )
    assert [t.parent_id for t in turns] == [root.span_id] * 2
    first, second = turns
    assert first.attributes["turn.was_interrupted"] is True
    assert first.events == [
        "user stopped speaking",
        "bot started speaking",
        "interruption",
    ]
    assert first.attributes["turn.response_latency_ms"] > 0
    assert second.attributes["turn.was_interrupted"] is False
    assert second.events == ["user stopped speaking", "bot started speaking"]

    jobs = jobs_of(spans, first)
    assert set(jobs) == {"stt", "llm", "tts"}
    assert jobs["stt"].attributes["transcript"] == "what time is it"
    llm = jobs["llm"].attributes
    assert llm["gen_ai.request.model"] == "fake-model"
    assert (llm["gen_ai.usage.input_tokens"], llm["gen_ai.usage.output_tokens"]) == (12, 4)
    tts = jobs["tts"]
    assert tts.attributes["metrics.character_count"] == len("It is noon.")
    assert tts.events == ["interruption"] and tts.attributes["job.cancelled"] is True
    for job in jobs.values():
        assert 0 < job.attributes["metrics.ttfb"] < 10
        assert job.status == "UNSET"
        assert first.start_ns <= job.start_ns

    later = jobs_of(spans, second)
    assert set(later) == {"stt", "llm", "tts"}
    assert later["stt"].attributes["transcript"] == "stop"
    assert later["llm"].attributes["gen_ai.usage.input_tokens"] == 30
    assert "interruption" not in later["tts"].events
    assert len(spans) == 9  # call, 2 turns, 6 jobs: no span per audio frame
    call.close()


def test_a_failed_job_is_an_error_span_and_the_call_goes_on(
    runtime, receiver, telemetry, providers
):
    providers.routes["/v1/chat/completions"] = [
        status_handler(500, {"error": {"message": "boom"}}),
        sse_handler(openai_chunks(["Back."])),
    ]
    llm = lambda: OpenAILLMService(  # noqa: E731
        model="m", base_url=providers.url + "/v1", api_key="k-1", retry=FAST, timeouts=TIMEOUTS
    )
    out = Recorder()
    call = runtime.open_call(Pipeline([telemetry.tracer_factory(), llm]), out)
    for n in (1, 2):
        call.push(LLMMessagesFrame([{"role": "user", "content": "hi"}]))
        assert wait_until(lambda n=n: len(out.of(LLMFullResponseEndFrame)) == n)
    call.close()
    telemetry.flush()
    assert receiver.wait_for(lambda spans: any(s.name == "call" for s in spans))
    spans = receiver.spans()
    [root] = [s for s in spans if s.name == "call"]
    failed, answered = children(spans, root)
    assert failed.name == answered.name == "llm"  # outside any turn: children of the call
    assert failed.status == "ERROR" and "boom" in failed.status_message
    assert answered.status == "UNSET"


def test_an_untraced_call_makes_no_spans(runtime, receiver, telemetry, providers):
    providers.routes["/v1/chat/completions"] = sse_handler(openai_chunks(["Hi."]))
    llm = lambda: OpenAILLMService(  # noqa: E731
        model="m", base_url=providers.url + "/v1", api_key="k-2", retry=FAST, timeouts=TIMEOUTS
    )
    out = Recorder()
    call = runtime.open_call(Pipeline([llm]), out)
    call.push(LLMMessagesFrame([{"role": "user", "content": "hi"}]))
    assert wait_until(lambda: out.of(LLMFullResponseEndFrame))
    assert call.processors[0].trace is None
    call.close()
    assert telemetry.flush()
    assert receiver.spans() == []


def test_the_server_exports_each_call_s_trace_where_its_config_says(tmp_path, receiver, providers):
    base = providers.url + "/v1"
    path = tmp_path / "agent.yaml"
    path.write_text(
        "server: {host: 127.0.0.1, port: 0, playground: false, webrtc: false}\n"
        f"telemetry: {{otlp_endpoint: {receiver.url}, service_name: agent-under-test}}\n"
        "transports: {carriers: [twilio]}\n"
        "agent:\n"
        "  kind: pipeline\n"
        "  vad: {engine: energy}\n"
        f"  stt: {{engine: openai, base_url: {base}, api_key_env: null}}\n"
        f"  llm: {{engine: openai, model: m, provider: vllm, base_url: {base}}}\n"
        f"  tts: {{engine: openai, base_url: {base}, api_key_env: null}}\n"
    )
    server = AgentServer(load_config(path)).start()
    try:

        async def call() -> None:
            async with websockets.connect(twilio_stream_url(server.port, "CA-yaml-7")) as ws:
                await ws.send(twilio_start(stream="MZ-yaml", call="CA-yaml-7"))
                for n in range(10):
                    await ws.send(twilio_media(b"\xff" * 160, n, stream="MZ-yaml"))

        asyncio.run(call())
    finally:
        server.stop(grace=1)  # and the last spans are exported
    assert receiver.wait_for(lambda spans: any(s.name == "call" for s in spans))
    [root] = [s for s in receiver.spans() if s.name == "call"]
    assert root.resource["service.name"] == "agent-under-test"
    assert root.attributes["call.carrier"] == "twilio"
    assert root.attributes["call.carrier_call_id"] == "CA-yaml-7"
    assert root.attributes["call.stream_id"] == "MZ-yaml"
    assert root.attributes["call.end_reason"] == "cancelled"  # the caller hung up
