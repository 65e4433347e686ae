"""The offline set: an agent that listens, thinks and talks with no network at all.

- :class:`~flowcat_ft.services.offline.sphinx_stt.SphinxSTT`: PocketSphinx speech
  recognition, streamed as the caller speaks to a pool of worker processes on the GIL
  twin (:class:`~flowcat_ft.services.offline.sphinx_pool.SphinxPool`), constrained by a
  grammar;
- :class:`~flowcat_ft.services.offline.graph.GraphLLM`: a conversation graph from YAML in
  place of an LLM (:class:`~flowcat_ft.services.offline.echo_llm.EchoLLM` for tests);
- :class:`~flowcat_ft.services.offline.espeak_tts.EspeakTTS`: espeak-ng speech;
- :class:`~flowcat_ft.services.offline.playout.BotPlayout`: the bot's audio at real time,
  and when the bot speaks (for barge-in);
- :class:`~flowcat_ft.services.offline.transcript.TranscriptRecorder`: the conversation
  as the caller heard it.

:func:`offline_agent_pipeline` puts them together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from flowcat_ft.audio.turns import TurnDetector
from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADParams
from flowcat_ft.audio.vad_processor import VADAnalyzer
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.services.barge_in import (
    ALWAYS_INTERRUPT,
    DEFAULT_PAUSE_AFTER_SECS,
    DEFAULT_PAUSE_TIMEOUT_SECS,
    BargeInGate,
)
from flowcat_ft.services.offline.echo_llm import EchoLLM
from flowcat_ft.services.offline.espeak_tts import EspeakTTS
from flowcat_ft.services.offline.graph import ConversationGraph, GraphError, GraphLLM, load_graph
from flowcat_ft.services.offline.playout import BotPlayout
from flowcat_ft.services.offline.sphinx_pool import SphinxPool, SphinxWorker, SphinxWorkerError
from flowcat_ft.services.offline.sphinx_stt import SphinxSTT
from flowcat_ft.services.offline.transcript import Transcript, TranscriptRecorder

__all__ = [
    "DEFAULT_GRAPH",
    "BotPlayout",
    "ConversationGraph",
    "EchoLLM",
    "EspeakTTS",
    "GraphError",
    "GraphLLM",
    "SphinxPool",
    "SphinxSTT",
    "SphinxWorker",
    "SphinxWorkerError",
    "Transcript",
    "TranscriptRecorder",
    "load_graph",
    "offline_agent_pipeline",
    "vad_analyzer",
]

DEFAULT_GRAPH = Path(__file__).with_name("default_agent.yaml")
"""The default agent's graph: a small friendly assistant (time, weather, goodbye)."""

VAD_PARAMS = VADParams(stop_secs=0.2)
"""A short stop: the turn detector's own timeout decides when the caller has finished."""


def vad_analyzer(
    params: VADParams = VAD_PARAMS, engine: str = "auto"
) -> Callable[[int], VADAnalyzer]:
    """An analyzer factory. *engine* ``"silero"``: Silero VAD (ImportError if its model or
    onnxruntime is not installed); ``"energy"``: the energy VAD; ``"auto"``: Silero where
    it is installed and takes the call's rate, else the energy VAD."""
    if engine not in ("auto", "silero", "energy"):
        raise ValueError(f"unknown VAD engine {engine!r}")
    silero = None
    if engine != "energy":
        try:
            from flowcat_ft.audio.silero import SAMPLE_RATES, SileroVADAnalyzer, model_path

            model_path()
            silero = SileroVADAnalyzer
        except ImportError:
            if engine == "silero":
                raise

    def make(rate: int) -> VADAnalyzer:
        if silero is not None and (engine == "silero" or rate in SAMPLE_RATES):
            return silero(rate, params, batched=True)
        return EnergyVADAnalyzer(rate, params)

    return make


def offline_agent_pipeline(
    graph_path: str | Path | None = None,
    *,
    tools: Mapping[str, Callable] | None = None,
    voice: str = "en-us",
    rate_wpm: int = 175,
    turn_timeout_secs: float = 0.8,
    barge_in: Literal["words", "speech"] = "words",
    min_barge_in_words: int = 2,
    min_barge_in_secs: float = 0.5,
    pause_on_speech: bool = True,
    pause_after_secs: float = DEFAULT_PAUSE_AFTER_SECS,
    pause_timeout_secs: float | None = DEFAULT_PAUSE_TIMEOUT_SECS,
    analyzer: Callable[[int], VADAnalyzer] | None = None,
    dictation: bool = False,
    echo: bool = False,
    tracer: Callable[[], FrameProcessor] | None = None,
    stt_workers: int | None = None,
) -> Pipeline:
    """The offline agent, for mono PCM in and out at 8 or 16 kHz (Silero VAD's rates; at
    other rates the energy VAD listens).

    The caller's audio goes through a turn detector (a VAD processor that says when the
    caller's turns start and end; *analyzer* makes each call's analyzer,
    :func:`vad_analyzer` by default), PocketSphinx listening for the phrases of the graph
    in *graph_path* (the default agent when None; *tools* adds to its tools) on the
    runtime's pool of *stt_workers* worker processes (None: one per core), the graph,
    espeak-ng (*voice*, *rate_wpm*), and the playout that lets the bot's audio out at real
    time and says when the bot speaks. The last stage records the conversation as the
    caller heard it. *dictation*: PocketSphinx takes any words, not only the graph's
    phrases. *echo*: the :class:`EchoLLM` answers in place of a graph, with what it heard
    (taken by dictation).

    *barge_in* ``"words"``: what the caller says over the bot is always transcribed, and
    interrupts it when it has *min_barge_in_words* words or more, or holds one of the
    graph's interrupting phrases ("stop", "goodbye"); anything else is answered when the
    bot has finished (:class:`~flowcat_ft.services.barge_in.BargeInGate`, after the
    speech recogniser); with *pause_on_speech* the bot's audio pauses as soon as the
    caller speaks over it (once the VAD has heard *pause_after_secs* of speech), and plays
    on if the words do not interrupt, or after *pause_timeout_secs* paused with no decision.
    ``"speech"``: speech over the bot interrupts it once it has lasted
    *min_barge_in_secs*, and shorter speech is let go, untranscribed.
    *tracer* (a :class:`~flowcat_ft.telemetry.tracing.ConversationTracer` factory), placed
    after the turn detector, traces the conversation.
    """
    if barge_in not in ("words", "speech"):
        raise ValueError(f"barge_in is 'words' or 'speech', not {barge_in!r}")
    interrupt_phrases: list[str] = []
    if echo:
        phrases, llm = None, EchoLLM
    else:
        graph = load_graph(graph_path or DEFAULT_GRAPH, tools)
        interrupt_phrases = graph.interrupt_phrases
        phrases = None if dictation else [*graph.phrases, *ALWAYS_INTERRUPT]
        llm = lambda: GraphLLM(graph)  # noqa: E731
    analyzer = analyzer or vad_analyzer()
    by_words = barge_in == "words"
    turns = lambda: TurnDetector(  # noqa: E731
        analyzer,
        turn_timeout_secs=turn_timeout_secs,
        min_barge_in_secs=min_barge_in_secs,
        interrupts=not by_words,
        onset_secs=pause_after_secs,
    )
    stt = lambda: SphinxSTT(phrases, pool_size=stt_workers)  # noqa: E731
    gate = lambda: BargeInGate(  # noqa: E731
        min_words=min_barge_in_words,
        phrases=interrupt_phrases,
        pause_on_speech=pause_on_speech,
        pause_timeout_secs=pause_timeout_secs,
    )
    traced = [turns, tracer] if tracer is not None else [turns]
    listen = [*traced, stt, gate] if by_words else [*traced, stt]
    return Pipeline(
        [*listen, llm, lambda: EspeakTTS(voice, rate_wpm), BotPlayout, TranscriptRecorder]
    )
