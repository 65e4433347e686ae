"""The agent a configuration describes: its pipeline, and how media sessions feed it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from flowcat_ft.agents.echo import echo_pipeline
from flowcat_ft.audio.turns import TurnDetector
from flowcat_ft.audio.vad_processor import VADAnalyzer
from flowcat_ft.pipeline import Pipeline, ProcessorFactory
from flowcat_ft.server.config import (
    AnthropicLLMConfig,
    CartesiaTTSConfig,
    Config,
    ConfigError,
    DeepgramSTTConfig,
    EchoLLMConfig,
    ElevenLabsTTSConfig,
    EspeakTTSConfig,
    GraphLLMConfig,
    LLMConfig,
    OpenAILLMConfig,
    OpenAISTTConfig,
    OpenAITTSConfig,
    SphinxSTTConfig,
    STTConfig,
    TTSConfig,
)
from flowcat_ft.services.agent import cloud_agent_pipeline
from flowcat_ft.services.aggregators import LLMContextAggregatorPair
from flowcat_ft.services.barge_in import BargeInGate
from flowcat_ft.services.llm import AnthropicLLMService, OpenAILLMService
from flowcat_ft.services.offline import (
    EspeakTTS,
    GraphError,
    SphinxSTT,
    SphinxWorkerError,
    offline_agent_pipeline,
    vad_analyzer,
)
from flowcat_ft.services.offline.sphinx_pool import find_worker_python
from flowcat_ft.services.stt import DeepgramSTTService, OpenAISTTService
from flowcat_ft.services.tools import ToolRegistry, end_call_tool
from flowcat_ft.services.tts import CartesiaTTSService, ElevenLabsTTSService, OpenAITTSService
from flowcat_ft.transports.session import MediaOptions

__all__ = ["Agent", "build_agent"]

_TTS_RATE = 16000  # asked of a cloud TTS where the pipeline takes the carrier's rate
_ELEVENLABS_RATES = (16000, 22050, 24000, 44100)  # its pcm_<rate> output formats


class Agent(NamedTuple):
    """What the server runs: the pipeline, and the options of the sessions that feed it."""

    pipeline: Pipeline
    options: MediaOptions


def build_agent(config: Config, tracer: ProcessorFactory | None = None) -> Agent:
    """Assemble the agent of *config*. What its engines need from this machine is checked
    here, as :class:`~flowcat_ft.server.config.ConfigError`\\ s naming the field: the
    Silero model, espeak-ng, PocketSphinx's worker python, a graph that loads. *tracer*
    (a :class:`~flowcat_ft.telemetry.tracing.ConversationTracer` factory) traces each
    conversation of the offline and pipeline agents."""
    agent = config.agent
    options = MediaOptions(
        sample_rate=agent.sample_rate,
        idle_timeout=config.limits.idle_timeout,
        max_frames_per_second=config.limits.max_frames_per_second,
    )
    if agent.kind == "echo":
        return Agent(echo_pipeline(), options)
    analyzer = _analyzer(config)
    if isinstance(agent.stt, SphinxSTTConfig):
        try:
            find_worker_python()
        except SphinxWorkerError as error:
            raise config.error("agent.stt.engine", str(error)) from None
    if isinstance(agent.tts, EspeakTTSConfig):
        try:
            EspeakTTS(agent.tts.voice)  # finds the executable
        except FileNotFoundError as error:
            raise config.error("agent.tts.engine", str(error)) from None
    if agent.kind == "offline":
        return Agent(_offline(config, analyzer, tracer), options)
    by_words = agent.turns.barge_in == "words"
    turns = partial(
        TurnDetector,
        analyzer,
        turn_timeout_secs=agent.turns.timeout_secs,
        min_barge_in_secs=agent.turns.min_barge_in_secs,
        interrupts=not by_words,
        onset_secs=agent.turns.pause_after_secs,
    )
    pipeline = cloud_agent_pipeline(
        _llm(agent.llm),
        _tts(agent.tts, agent.sample_rate),
        stt=_stt(agent.stt),
        turns=turns,
        barge_in=partial(
            BargeInGate,
            min_words=agent.turns.min_barge_in_words,
            pause_on_speech=agent.turns.pause_on_speech,
            pause_timeout_secs=agent.turns.pause_timeout_secs,
        )
        if by_words
        else None,
        context=LLMContextAggregatorPair(system_prompt=getattr(agent.llm, "system_prompt", None)),
        tracer=tracer,
    )
    return Agent(pipeline, options)


def _analyzer(config: Config) -> Callable[[int], VADAnalyzer]:
    vad, rate = config.agent.vad, config.agent.sample_rate
    try:
        analyzer = vad_analyzer(vad.params, vad.engine)
    except ImportError as error:
        raise config.error("agent.vad.engine", f"Silero VAD is not installed: {error}") from None
    if vad.engine == "silero":
        from flowcat_ft.audio.silero import SAMPLE_RATES

        if rate is not None and rate not in SAMPLE_RATES:
            raise config.error(
                "agent.vad.engine", f"Silero VAD takes {SAMPLE_RATES} Hz audio, not {rate}"
            )
    return analyzer


def _offline(
    config: Config, analyzer: Callable[[int], VADAnalyzer], tracer: ProcessorFactory | None
) -> Pipeline:
    agent = config.agent
    llm, tts = agent.llm, agent.tts
    try:
        return offline_agent_pipeline(
            llm.graph if isinstance(llm, GraphLLMConfig) else None,
            voice=tts.voice,
            rate_wpm=tts.rate_wpm,
            turn_timeout_secs=agent.turns.timeout_secs,
            barge_in=agent.turns.barge_in,
            min_barge_in_words=agent.turns.min_barge_in_words,
            min_barge_in_secs=agent.turns.min_barge_in_secs,
            pause_on_speech=agent.turns.pause_on_speech,
            pause_after_secs=agent.turns.pause_after_secs,
            pause_timeout_secs=agent.turns.pause_timeout_secs,
            analyzer=analyzer,
            stt_workers=agent.stt.workers,
            dictation=agent.stt.mode == "dictation",
            echo=isinstance(llm, EchoLLMConfig),
            tracer=tracer,
        )
    except GraphError as error:
        raise ConfigError(error.source, error.line, error.field, error.problem) from None
    except OSError as error:
        raise config.error("agent.llm.graph", f"cannot read the graph: {error}") from None


def _stt(stt: STTConfig) -> ProcessorFactory:
    # Nothing after a cloud STT in the pipeline agent uses the caller's audio: it ends
    # there rather than travel every later stage and back to the transport.
    match stt:
        case SphinxSTTConfig():
            # Dictation: a pipeline agent has no graph to make a grammar.
            return partial(SphinxSTT, pool_size=stt.workers)
        case DeepgramSTTConfig():
            return partial(
                DeepgramSTTService,
                model=stt.model,
                language=stt.language,
                url=stt.url,
                api_key_env=stt.api_key_env,
                chunk_ms=stt.chunk_ms,
                audio_passthrough=False,
            )
        case OpenAISTTConfig():
            return partial(
                OpenAISTTService,
                model=stt.model,
                language=stt.language,
                prompt=stt.prompt,
                base_url=stt.base_url,
                api_key_env=stt.api_key_env,
                audio_passthrough=False,
            )
    raise TypeError(f"not an STT engine: {stt!r}")


def _llm(llm: LLMConfig) -> ProcessorFactory:
    match llm:
        case OpenAILLMConfig():
            return partial(
                OpenAILLMService,
                model=llm.model,
                provider=llm.provider,
                base_url=llm.base_url,
                api_key_env=llm.api_key_env,
                params=_params(llm.temperature),
                tools=_tools(llm.end_call),
            )
        case AnthropicLLMConfig():
            return partial(
                AnthropicLLMService,
                model=llm.model,
                base_url=llm.base_url,
                api_key_env=llm.api_key_env,
                max_tokens=llm.max_tokens,
                params=_params(llm.temperature),
                tools=_tools(llm.end_call),
            )
    raise TypeError(f"not an LLM engine of a pipeline agent: {llm!r}")


def _params(temperature: float | None) -> dict[str, float]:
    return {} if temperature is None else {"temperature": temperature}


def _tools(end_call: bool) -> ToolRegistry | None:
    return ToolRegistry([end_call_tool()]) if end_call else None


def _tts(tts: TTSConfig, rate: int | None) -> ProcessorFactory:
    match tts:
        case EspeakTTSConfig():
            return partial(EspeakTTS, tts.voice, tts.rate_wpm)
        case CartesiaTTSConfig():
            return partial(
                CartesiaTTSService,
                voice_id=tts.voice,
                model=tts.model,
                language=tts.language,
                url=tts.url,
                api_key_env=tts.api_key_env,
                sample_rate=rate or _TTS_RATE,
            )
        case ElevenLabsTTSConfig():
            return partial(
                ElevenLabsTTSService,
                voice_id=tts.voice,
                model=tts.model,
                base_url=tts.base_url,
                api_key_env=tts.api_key_env,
                sample_rate=rate if rate in _ELEVENLABS_RATES else _TTS_RATE,
            )
        case OpenAITTSConfig():
            return partial(
                OpenAITTSService,
                voice=tts.voice,
                model=tts.model,
                base_url=tts.base_url,
                api_key_env=tts.api_key_env,
            )
    raise TypeError(f"not a TTS engine: {tts!r}")
