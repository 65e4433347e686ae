"""A cloud agent's chain of stages: an LLM that answers from a context, and its neighbours."""

from __future__ import annotations

from flowcat_ft.pipeline import Item, Pipeline
from flowcat_ft.services.aggregators import LLMContextAggregatorPair
from flowcat_ft.services.offline.playout import BotPlayout

__all__ = ["cloud_agent_pipeline"]


def cloud_agent_pipeline(
    llm: Item,
    tts: Item,
    *,
    stt: Item | None = None,
    turns: Item | None = None,
    barge_in: Item | None = None,
    context: LLMContextAggregatorPair | None = None,
    playout: bool = True,
    tracer: Item | None = None,
) -> Pipeline:
    """An agent around an LLM that answers from the call's context::

        turns → [tracer] → stt → barge_in → context.user → llm → tts → BotPlayout
              → context.assistant

    *turns* (a :class:`~flowcat_ft.audio.turns.TurnDetector`) says when the caller speaks
    (and barges in, unless *barge_in*, a :class:`~flowcat_ft.services.barge_in.BargeInGate`,
    decides that on the words), and *stt* transcribes; leave them out where turns and
    transcripts come from elsewhere. *context* makes the aggregators (default: no system prompt).
    *playout* lets the bot's audio out at real time and says when the bot speaks, which
    the turn detector needs to tell a barge-in; leave it out where nothing listens for it.
    *tracer* (a :class:`~flowcat_ft.telemetry.tracing.ConversationTracer`) traces the
    conversation.
    """
    context = context or LLMContextAggregatorPair()
    stages = [turns, tracer, stt, barge_in, context.user, llm, tts, BotPlayout if playout else None]
    return Pipeline([stage for stage in stages if stage is not None] + [context.assistant])
