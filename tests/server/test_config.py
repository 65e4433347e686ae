"""The agent configuration: YAML in, frozen dataclasses out, every mistake named by file,
line and field; and the agents assembled from it, offline, echo and cloud (one of them
answering a caller through local stand-ins for the providers)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_until
from peers import need_program
from services.fake_providers import (
    FakeCartesia,
    FakeDeepgram,
    FakeHTTPServer,
    Recorder,
    openai_chunks,
    sse_handler,
    tone,
)
from services.offline_speech import need_worker_python

from flowcat_ft.agents.echo import Echo
from flowcat_ft.audio.turns import TurnDetector
from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADParams
from flowcat_ft.frames import BotStartedSpeakingFrame, TranscriptionFrame, TTSAudioRawFrame
from flowcat_ft.server.agent import build_agent
from flowcat_ft.server.config import (
    AgentConfig,
    AnthropicLLMConfig,
    CartesiaTTSConfig,
    Config,
    ConfigError,
    DeepgramSTTConfig,
    ElevenLabsTTSConfig,
    EspeakTTSConfig,
    GraphLLMConfig,
    LimitsConfig,
    LoggingConfig,
    OpenAILLMConfig,
    OpenAISTTConfig,
    ServerConfig,
    SphinxSTTConfig,
    TransportsConfig,
    TurnsConfig,
    VADConfig,
    load_config,
)
from flowcat_ft.services.aggregators import AssistantContextAggregator, UserContextAggregator
from flowcat_ft.services.barge_in import BargeInGate
from flowcat_ft.services.llm import AnthropicLLMService, OpenAILLMService
from flowcat_ft.services.offline import (
    DEFAULT_GRAPH,
    BotPlayout,
    EchoLLM,
    EspeakTTS,
    GraphLLM,
    SphinxSTT,
    TranscriptRecorder,
    vad_analyzer,
)
from flowcat_ft.services.stt import DeepgramSTTService
from flowcat_ft.services.tts import CartesiaTTSService
from flowcat_ft.transports.server import CARRIERS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEYS = (
    "DEEPGRAM_API_KEY",
    "OPENAI_API_KEY",
    "CARTESIA_API_KEY",
    "ANTHROPIC_API_KEY",
    "GROQ_API_KEY",
    "FLOWCAT_ACCESS_TOKEN",
)


@pytest.fixture
def keys(monkeypatch):
    for name in KEYS:
        monkeypatch.setenv(name, f"test-{name.lower()}")


@pytest.fixture
def no_keys(monkeypatch):
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)


def write(tmp_path, text, name="agent.yaml"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def mistakes(tmp_path, text):
    """The ConfigError that loading *text* raises, and the file's path."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value, str(path)


def need_offline_engines():
    need_program("espeak-ng")
    need_worker_python()


def kinds(pipeline):
    return [type(p) for p in pipeline.make_processors()]


# -- loading --------------------------------------------------------------------------------


def test_an_empty_file_or_none_is_the_default_offline_agent(tmp_path):
    path = write(tmp_path, "# nothing here\n")
    config = load_config(path)
    assert config == load_config(None) == Config()
    assert config.source == str(path)
    assert config.server == ServerConfig(host="127.0.0.1", port=8765, playground=True)
    assert config.server.access_token_env is None and not config.server.insecure
    assert config.server.tls_context() is None and config.server.trusted_proxies == ()
    assert config.server.webrtc == "auto" and config.server.public_url is None
    assert config.server.webrtc_companions is None
    assert config.limits == LimitsConfig(max_calls=1000, idle_timeout=30.0, shutdown_grace=5.0)
    assert config.logging == LoggingConfig(level="INFO", format="text")
    assert config.transports.carriers == CARRIERS
    agent = config.agent
    assert (agent.kind, agent.sample_rate) == ("offline", None)  # the carrier's own rate
    assert agent.vad.params == VADParams(stop_secs=0.2)  # the offline agent's
    assert agent.turns == TurnsConfig(
        timeout_secs=0.8, barge_in="words", min_barge_in_words=2, min_barge_in_secs=0.5
    )
    assert agent.turns.pause_on_speech
    assert agent.stt == SphinxSTTConfig(mode="auto", workers=None)
    assert agent.llm == GraphLLMConfig(graph=DEFAULT_GRAPH)
    assert agent.tts == EspeakTTSConfig(voice="en-us", rate_wpm=175)


FULL = """\
server:
  host: 127.0.0.1
  port: 9000
  loops: 2
  public_url: https://agent.example.com
  playground: false
  webrtc: false
  webrtc_companions: 3
limits: {max_calls: 50, idle_timeout: 12.5, shutdown_grace: 0, max_frames_per_second: 60}
logging: {level: debug, format: json}
transports:
  carriers: [twilio, raw]
agent:
  kind: pipeline
  sample_rate: 24000
  vad: {engine: energy, confidence: 0.5, start_secs: 0.1, stop_secs: 0.3, min_volume: 0.4}
  turns: {timeout_secs: 1.2, barge_in: speech, min_barge_in_secs: 0.25}
  stt:
    engine: openai
    model: whisper-1
    language: de
    prompt: Flowcat
    base_url: http://127.0.0.1:9/v1
    api_key_env: null
  llm:
    engine: anthropic
    model: claude-test
    base_url: http://127.0.0.1:9
    api_key_env: ANTHROPIC_API_KEY
    system_prompt: Be brief.
    temperature: 0.3
    max_tokens: 200
  tts:
    engine: elevenlabs
    voice: voice-9
    model: eleven_turbo
    base_url: ws://127.0.0.1:9
    api_key_env: CARTESIA_API_KEY
"""


def test_a_full_file_round_trips(tmp_path, keys):
    expected = Config(
        server=ServerConfig(
            host="127.0.0.1",
            port=9000,
            loops=2,
            public_url="https://agent.example.com",
            playground=False,
            webrtc=False,
            webrtc_companions=3,
        ),
        limits=LimitsConfig(
            max_calls=50, idle_timeout=12.5, shutdown_grace=0.0, max_frames_per_second=60
        ),
        logging=LoggingConfig(level="DEBUG", format="json"),
        transports=TransportsConfig(carriers=("twilio", "raw")),
        agent=AgentConfig(
            kind="pipeline",
            sample_rate=24000,
            vad=VADConfig(
                engine="energy", confidence=0.5, start_secs=0.1, stop_secs=0.3, min_volume=0.4
            ),
            turns=TurnsConfig(timeout_secs=1.2, barge_in="speech", min_barge_in_secs=0.25),
            stt=OpenAISTTConfig(
                model="whisper-1",
                language="de",
                prompt="Flowcat",
                base_url="http://127.0.0.1:9/v1",
                api_key_env=None,
            ),
            llm=AnthropicLLMConfig(
                model="claude-test",
                base_url="http://127.0.0.1:9",
                api_key_env="ANTHROPIC_API_KEY",
                system_prompt="Be brief.",
                temperature=0.3,
                max_tokens=200,
            ),
            tts=ElevenLabsTTSConfig(
                voice="voice-9",
                model="eleven_turbo",
                base_url="ws://127.0.0.1:9",
                api_key_env="CARTESIA_API_KEY",
            ),
        ),
    )
    config = load_config(write(tmp_path, FULL))
    assert config == expected
    assert (
        config.lines["agent.llm.temperature"] == FULL.splitlines().index("    temperature: 0.3") + 1
    )


def test_a_graph_is_found_beside_the_file_and_a_provider_fills_in_its_defaults(tmp_path, keys):
    write(tmp_path, DEFAULT_GRAPH.read_text(), "conf/graphs/mine.yaml")
    config = load_config(
        write(tmp_path, "agent:\n  llm: {graph: graphs/mine.yaml}\n", "conf/agent.yaml")
    )
    assert config.agent.llm.graph == tmp_path / "conf" / "graphs" / "mine.yaml"

    config = load_config(
        write(tmp_path, "agent: {kind: pipeline, llm: {engine: openai, model: m, provider: groq}}")
    )
    assert config.agent.llm == OpenAILLMConfig(
        model="m",
        provider="groq",
        base_url="https://api.groq.com/openai/v1",
        api_key_env="GROQ_API_KEY",
    )
    echo = load_config(write(tmp_path, "agent: {kind: echo}"))
    assert echo.agent.sample_rate is None  # the carrier's own rate


def test_both_examples_load(keys):
    assert load_config(EXAMPLES / "agent.yaml") == Config()
    cloud = load_config(EXAMPLES / "cloud_agent.yaml").agent
    assert cloud.kind == "pipeline"
    assert isinstance(cloud.stt, DeepgramSTTConfig) and cloud.stt.api_key_env == "DEEPGRAM_API_KEY"
    assert isinstance(cloud.llm, OpenAILLMConfig) and cloud.llm.api_key_env == "OPENAI_API_KEY"
    assert isinstance(cloud.tts, CartesiaTTSConfig) and cloud.tts.api_key_env == "CARTESIA_API_KEY"


# -- mistakes -------------------------------------------------------------------------------


def test_an_unknown_field_is_named_with_a_suggestion(tmp_path):
    error, path = mistakes(tmp_path, "server:\n  host: localhost\n  prot: 80\n")
    assert (error.path, error.line, error.field) == (path, 3, "server.prot")
    assert str(error) == f"{path}:3: server.prot: unknown field (did you mean 'port'?)"
    error, _ = mistakes(tmp_path, "agent:\n  zzz: 1\n")
    assert error.field == "agent.zzz" and "known: kind, sample_rate, vad" in error.message


def test_a_wrong_type_names_the_value(tmp_path):
    error, path = mistakes(tmp_path, "agent:\n  vad:\n    stop_secs: soon\n")
    assert str(error) == f"{path}:3: agent.vad.stop_secs: expected a number, got 'soon'"
    error, _ = mistakes(tmp_path, "server: {port: 80.5}")
    assert error.message == "expected a whole number, got 80.5"
    error, _ = mistakes(tmp_path, "agent: {vad: {stop_secs: .nan}}")
    assert error.field == "agent.vad.stop_secs"
    error, _ = mistakes(tmp_path, "transports: {carriers: twilio}")
    assert error.message == "expected a list, got 'twilio'"
    error, _ = mistakes(tmp_path, "- a list\n")
    assert error.message == "expected a mapping, got a list"
    error, _ = mistakes(tmp_path, "agent: {turns: {pause_on_speech: sometimes}}")
    assert error.field == "agent.turns.pause_on_speech"
    assert error.message == "expected true or false, got 'sometimes'"


def test_a_bad_choice_lists_the_choices(tmp_path):
    error, _ = mistakes(tmp_path, "agent:\n  vad: {engine: slero}\n")
    assert (error.line, error.field) == (2, "agent.vad.engine")
    assert error.message == (
        "expected one of auto, silero, energy, got 'slero' (did you mean 'silero'?)"
    )
    error, _ = mistakes(tmp_path, "transports:\n  carriers:\n    - twilio\n    - twillio\n")
    assert (error.line, error.field) == (4, "transports.carriers[1]")
    error, _ = mistakes(tmp_path, "agent: {sample_rate: 22050}")
    assert error.message == "expected one of 8000, 16000, 24000, 48000 or null, got 22050"
    error, _ = mistakes(tmp_path, "agent:\n  stt: {engine: whisper}\n")
    assert (error.line, error.field) == (2, "agent.stt.engine")
    assert error.message.startswith("expected one of sphinx, deepgram, openai, got 'whisper'")


def test_values_out_of_range(tmp_path):
    error, _ = mistakes(tmp_path, "server: {port: 70000}")
    assert error.message == "must be between 0 and 65535, got 70000"
    error, _ = mistakes(tmp_path, "limits: {idle_timeout: 0}")
    assert error.message == "must be more than 0, got 0"
    error, _ = mistakes(tmp_path, "agent: {vad: {confidence: 1.5}}")
    assert error.field == "agent.vad.confidence"
    error, _ = mistakes(tmp_path, "agent: {turns: {pause_timeout_secs: 0}}")
    assert error.message == "must be more than 0, got 0"


def test_an_option_the_engine_does_not_take(tmp_path, keys):
    error, _ = mistakes(
        tmp_path,
        """\
        agent:
          kind: pipeline
          stt:
            engine: deepgram
            prompt: hello
          llm: {engine: openai, model: m}
        """,
    )
    assert (error.line, error.field) == (5, "agent.stt.prompt")
    assert error.message.startswith("engine deepgram takes no prompt (it takes engine, model")
    error, _ = mistakes(tmp_path, "agent: {kind: pipeline, llm: {engine: openai}}")
    assert (error.field, error.message) == (
        "agent.llm.model",
        "is missing (engine openai needs it)",
    )


def test_a_key_in_the_file_is_refused_without_being_repeated(tmp_path):
    error, _ = mistakes(tmp_path, "agent:\n  llm:\n    api_key: sk-live-123456\n")
    assert (error.line, error.field) == (3, "agent.llm.api_key")
    assert "api_key_env" in error.message and "sk-live" not in str(error)
    error, _ = mistakes(
        tmp_path, "agent: {kind: pipeline, llm: {engine: openai, model: m, api_key_env: sk-x-1}}"
    )
    assert error.field == "agent.llm.api_key_env" and "sk-x-1" not in str(error)


def test_every_mistake_is_reported_at_once(tmp_path):
    error, path = mistakes(
        tmp_path,
        """\
        server:
          prot: 80
        logging: {format: xml}
        agent:
          vad: {stop_secs: soon}
        """,
    )
    assert [(e.line, e.field) for e in error.errors] == [
        (2, "server.prot"),
        (3, "logging.format"),
        (5, "agent.vad.stop_secs"),
    ]
    assert str(error).splitlines() == [str(e) for e in error.errors]
    assert str(error).splitlines()[1] == (
        f"{path}:3: logging.format: expected one of text, json, got 'xml'"
    )


def test_traces_go_to_an_otlp_http_url(tmp_path):
    path = write(tmp_path, "telemetry: {otlp_endpoint: http://collector:4318}\n")
    assert load_config(path).telemetry.otlp_endpoint == "http://collector:4318"
    assert load_config(None).telemetry.otlp_endpoint is None  # off by default
    error, path = mistakes(tmp_path, "telemetry: {otlp_endpoint: 'collector:4317'}\n")
    assert str(error) == (
        f"{path}:1: telemetry.otlp_endpoint: expected an http:// or https:// URL "
        "(OTLP over HTTP), got 'collector:4317'"
    )


def test_a_missing_file_and_a_yaml_syntax_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert (caught.value.path, caught.value.line) == (str(missing), None)
    assert str(caught.value) == f"{missing}: cannot read the file: No such file or directory"
    error, path = mistakes(tmp_path, "server:\n  port: 80\n  host: [unclosed\nagent: {}\n")
    assert (error.path, error.field) == (path, "YAML")
    assert error.line == 4  # where yaml noticed
    assert str(error).startswith(f"{path}:4: YAML: ")


def test_a_missing_key_variable_is_named(tmp_path, no_keys):
    error, path = mistakes(
        tmp_path,
        """\
        agent:
          kind: pipeline
          stt: {engine: sphinx}
          llm:
            engine: openai
            model: gpt-test
          tts:
            engine: openai
            api_key_env: MY_TTS_KEY
        """,
    )
    assert [(e.line, e.field) for e in error.errors] == [
        (4, "agent.llm.api_key_env"),  # not written: the line of its section
        (9, "agent.tts.api_key_env"),
    ]
    assert str(error.errors[0]) == (
        f"{path}:4: agent.llm.api_key_env: the environment variable OPENAI_API_KEY "
        "(the API key) is not set"
    )
    assert "MY_TTS_KEY" in error.errors[1].message


def test_a_graph_file_that_is_not_there(tmp_path):
    error, _ = mistakes(tmp_path, "agent:\n  llm:\n    graph: graphs/nope.yaml\n")
    assert (error.line, error.field) == (3, "agent.llm.graph")
    assert error.message == f"no such file: {tmp_path / 'graphs' / 'nope.yaml'}"


def test_fields_that_do_not_fit_the_agent(tmp_path, keys):
    error, _ = mistakes(tmp_path, "agent:\n  stt: {engine: deepgram}\n")
    assert (error.line, error.field) == (2, "agent.stt.engine")
    assert "offline agent needs no network: use sphinx" in error.message
    error, _ = mistakes(tmp_path, "agent: {kind: pipeline}")
    assert error.field == "agent.llm.engine" and "openai or anthropic" in error.message
    error, _ = mistakes(tmp_path, "agent:\n  kind: echo\n  tts: {voice: en-gb}\n")
    assert (error.line, error.field) == (3, "agent.tts")
    error, _ = mistakes(tmp_path, "agent: {llm: {engine: echo}, stt: {mode: grammar}}")
    assert error.field == "agent.stt.mode"
    error, _ = mistakes(tmp_path, "server: {public_url: agent.example.com}")
    assert error.field == "server.public_url"


def test_a_mistake_in_the_graph_is_named_in_the_graph_file(tmp_path):
    need_offline_engines()
    graph = write(tmp_path, "start: hi\nnodes:\n  hi:\n    reply: 'Hi {who}'\n", "g.yaml")
    config = load_config(write(tmp_path, "agent: {llm: {graph: g.yaml}}"))
    with pytest.raises(ConfigError) as caught:
        build_agent(config)
    assert (caught.value.path, caught.value.line) == (str(graph), 4)
    assert caught.value.field == "nodes.hi.reply"


def test_silero_takes_only_its_own_rates(tmp_path):
    config = load_config(
        write(tmp_path, "agent:\n  sample_rate: 48000\n  vad:\n    engine: silero\n")
    )
    with pytest.raises(ConfigError) as caught:
        build_agent(config)
    assert (caught.value.line, caught.value.field) == (4, "agent.vad.engine")


# -- building -------------------------------------------------------------------------------


def test_the_offline_agent(tmp_path):
    need_offline_engines()
    config = load_config(
        write(
            tmp_path,
            """\
            limits: {idle_timeout: 9, max_frames_per_second: 70}
            agent:
              vad: {engine: energy, stop_secs: 0.3}
              turns: {timeout_secs: 1.1, min_barge_in_words: 3, pause_after_secs: 0.1,
                      pause_timeout_secs: 2.5}
              stt: {workers: 3}
              tts: {voice: en-gb, rate_wpm: 150}
            """,
        )
    )
    pipeline, options = build_agent(config)
    assert (options.sample_rate, options.idle_timeout, options.max_frames_per_second) == (
        None,
        9.0,
        70,
    )
    turns, stt, gate, _, tts, *_ = processors = pipeline.make_processors()
    assert [type(p) for p in processors] == [
        TurnDetector,
        SphinxSTT,
        BargeInGate,
        GraphLLM,
        EspeakTTS,
        BotPlayout,
        TranscriptRecorder,
    ]
    assert (turns.turn_timeout_secs, turns.interrupts) == (1.1, False)
    assert gate.min_words == 3 and "goodbye" in gate.phrases and "stop" in gate.phrases
    assert gate.pause_on_speech and (turns.onset_secs, gate.pause_timeout_secs) == (0.1, 2.5)
    steady = load_config(write(tmp_path, "agent: {turns: {pause_on_speech: false}}"))
    assert not build_agent(steady).pipeline.make_processors()[2].pause_on_speech
    endless = load_config(write(tmp_path, "agent: {turns: {pause_timeout_secs: null}}"))
    assert build_agent(endless).pipeline.make_processors()[2].pause_timeout_secs is None
    assert stt.pool_size == 3
    analyzer = turns.analyzer_factory(16000)
    assert isinstance(analyzer, EnergyVADAnalyzer)
    assert analyzer.params == VADParams(stop_secs=0.3)
    assert stt.grammar is not None  # the graph's phrases
    assert (tts.voice, tts.rate_wpm) == ("en-gb", 150)

    echo = load_config(write(tmp_path, "agent: {llm: {engine: echo}}"))
    processors = build_agent(echo).pipeline.make_processors()
    assert type(processors[3]) is EchoLLM
    assert processors[1].grammar is None  # dictation: no graph to listen for

    # Barge-in on how long the caller spoke, as before: no gate, the detector interrupts.
    speech = load_config(write(tmp_path, "agent: {turns: {barge_in: speech}}"))
    turns, *processors = build_agent(speech).pipeline.make_processors()
    assert turns.interrupts and BargeInGate not in map(type, processors)


def test_the_echo_agent(tmp_path):
    pipeline, options = build_agent(load_config(write(tmp_path, "agent: {kind: echo}")))
    assert kinds(pipeline) == [Echo]
    assert options.sample_rate is None


def test_auto_vad_falls_back_to_energy_at_rates_silero_does_not_take():
    assert isinstance(vad_analyzer(engine="auto")(48000), EnergyVADAnalyzer)
    assert isinstance(vad_analyzer(engine="energy")(16000), EnergyVADAnalyzer)


def test_a_cloud_agent(keys):
    pipeline, options = build_agent(load_config(EXAMPLES / "cloud_agent.yaml"))
    processors = pipeline.make_processors()
    assert [type(p) for p in processors] == [
        TurnDetector,
        DeepgramSTTService,
        BargeInGate,
        UserContextAggregator,
        OpenAILLMService,
        CartesiaTTSService,
        BotPlayout,
        AssistantContextAggregator,
    ]
    _, stt, _, user, llm, tts, *_ = processors
    assert (stt.model, stt.url) == ("nova-3", "wss://api.deepgram.com/v1/listen")
    assert (llm.model, llm.base_url, llm.params) == (
        "gpt-4o-mini",
        "https://api.openai.com/v1",
        {"temperature": 0.7},
    )
    assert [tool.name for tool in llm.tools] == ["end_call"] and llm.tools.get("end_call").ends_call
    assert user.context.messages[0]["role"] == "system"
    assert "voice assistant" in user.context.messages[0]["content"]
    assert (tts.voice_id, tts.sample_rate) == ("a0e99841-438c-4a64-b679-ae501e7d6091", 16000)
    assert options.sample_rate == 16000


def test_an_anthropic_agent(tmp_path, keys):
    config = load_config(
        write(
            tmp_path,
            "agent: {kind: pipeline, stt: {engine: openai}, llm: {engine: anthropic, model: c},"
            " tts: {engine: openai}}",
        )
    )
    llm = build_agent(config).pipeline.make_processors()[4]
    assert isinstance(llm, AnthropicLLMService) and llm.model == "c"
    assert llm.tools is None  # end_call is offered only where asked for


@pytest.fixture
def providers():
    deepgram = FakeDeepgram(["hello", "there", "agent"], final_after=1.0)
    http, cartesia = FakeHTTPServer(), FakeCartesia()
    yield deepgram, http, cartesia
    for server in (deepgram, http, cartesia):
        server.close()


def test_a_cloud_agent_from_a_file_answers_a_caller(runtime, tmp_path, keys, providers):
    deepgram, http, cartesia = providers
    http.routes["/v1/chat/completions"] = sse_handler(openai_chunks(["Hi", " there", "."]))
    config = load_config(
        write(
            tmp_path,
            f"""\
            agent:
              kind: pipeline
              vad: {{engine: energy}}
              turns: {{timeout_secs: 0.3}}
              stt: {{engine: deepgram, url: "{deepgram.url}/v1/listen"}}
              llm:
                engine: openai
                model: m
                base_url: {http.url}/v1
                system_prompt: Be brief.
              tts: {{engine: cartesia, voice: v1, url: "{cartesia.url}"}}
            """,
        )
    )
    pipeline, _ = build_agent(config)
    out = Recorder()
    call = runtime.open_call(pipeline, out)
    noise = (np.random.default_rng(3).normal(0, 30, 16000) // 1).astype("<i2").tobytes()

    def push(pcm):
        for start in range(0, len(pcm), 640):  # 20 ms frames
            call.push_audio(pcm[start : start + 640], 16000)

    push(noise[: 640 * 15])
    push(tone(1.0, 16000, 3000))  # the caller speaks; Deepgram hears three words
    assert wait_until(lambda: out.of(TranscriptionFrame))
    push(noise)  # and stops: the turn ends, the LLM is asked
    assert wait_until(lambda: http.requests)
    assert http.requests[0].json()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there agent"},
    ]
    assert wait_until(lambda: out.of(TTSAudioRawFrame))  # Cartesia speaks the answer
    assert wait_until(lambda: out.of(BotStartedSpeakingFrame))  # the playout says so
    assert cartesia.requests[0]["voice"] == {"mode": "id", "id": "v1"}
    assert "sample_rate=16000" in deepgram.handshakes[0]["path"]
    call.close()
