"""The offline set: an agent that listens, thinks and talks with no network at all.

- :class:`~flowcat_ft.services.offline.sphinx_stt.SphinxSTT`: PocketSphinx speech
  recognition in a worker process on the GIL twin, constrained by a grammar;
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

from flowcat_ft.audio.turns import TurnDetector
from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADParams
from flowcat_ft.audio.vad_processor import VADAnalyzer
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.services.offline.echo_llm import EchoLLM
from flowcat_ft.services.offline.espeak_tts import EspeakTTS
from flowcat_ft.services.offline.graph import ConversationGraph, GraphError, GraphLLM, load_graph
from flowcat_ft.services.offline.playout import BotPlayout
from flowcat_ft.services.offline.sphinx_stt import SphinxSTT, SphinxWorker, SphinxWorkerError
from flowcat_ft.services.offline.transcript import Transcript, TranscriptRecorder

__all__ = [
    "DEFAULT_GRAPH",
    "BotPlayout",
    "ConversationGraph",
    "EchoLLM",
    "EspeakTTS",
    "GraphError",
    "GraphLLM",
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


def vad_analyzer(params: VADParams = VAD_PARAMS) -> Callable[[int], VADAnalyzer]:
    """An analyzer factory: Silero VAD if its model and onnxruntime are installed, else
    the energy VAD."""
    try:
        from flowcat_ft.audio.silero import SileroVADAnalyzer, model_path

        model_path()
    except ImportError:
        return lambda rate: EnergyVADAnalyzer(rate, params)
    return lambda rate: SileroVADAnalyzer(rate, params, batched=True)


def offline_agent_pipeline(
    graph_path: str | Path | None = None,
    *,
    tools: Mapping[str, Callable] | None = None,
    voice: str = "en-us",
    turn_timeout_secs: float = 0.8,
) -> Pipeline:
    """The offline agent, for 16 kHz mono PCM in and out.

    The caller's audio goes through a turn detector (a VAD processor that also handles
    barge-in), PocketSphinx listening for the phrases of the graph in *graph_path* (the
    default agent when None; *tools* adds to its tools), the graph, espeak-ng, and the
    playout that lets the bot's audio out at real time and tells the turn detector when
    the bot speaks. The last stage records the conversation as the caller heard it.
    """
    graph = load_graph(graph_path or DEFAULT_GRAPH, tools)
    analyzer = vad_analyzer()
    phrases = graph.phrases
    return Pipeline(
        [
            lambda: TurnDetector(analyzer, turn_timeout_secs=turn_timeout_secs),
            lambda: SphinxSTT(phrases),
            lambda: GraphLLM(graph),
            lambda: EspeakTTS(voice),
            BotPlayout,
            TranscriptRecorder,
        ]
    )
