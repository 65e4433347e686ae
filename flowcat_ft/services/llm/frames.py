"""Frames the services exchange beyond the core set: LLM input, function calls, speech.

Named as in pipecat, where a pipecat user looks for them. Which way each travels:

- :class:`LLMContextFrame` and :class:`LLMMessagesFrame` go down to an LLM service: "answer
  this conversation". The user context aggregator sends the first; an application may send
  the second.
- :class:`LLMMessagesAppendFrame`, :class:`LLMMessagesUpdateFrame` and :class:`LLMRunFrame`
  change (and run) the context held by the user context aggregator; the assistant
  aggregator sends :class:`LLMMessagesAppendFrame` *upstream* with what the caller heard.
- :class:`FunctionCallsStartedFrame`, :class:`FunctionCallInProgressFrame`,
  :class:`FunctionCallResultFrame` and :class:`FunctionCallCancelFrame` report function calls
  downstream (for observers) and, the started and result frames, upstream to the context
  aggregator, which records them.
- :class:`TTSSpeakFrame` asks a TTS service to say a text as it is.
- :class:`UtteranceEndFrame` goes down from an STT service whose provider detects the end
  of the user's utterance: the final transcripts before it complete the user's turn.
- :class:`MetricsFrame` carries a service's measurements (TTFB, usage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcat_ft.frames import ControlFrame, DataFrame, SystemFrame

if TYPE_CHECKING:
    from flowcat_ft.services.context import LLMContext, Message

__all__ = [
    "FunctionCallCancelFrame",
    "FunctionCallInProgressFrame",
    "FunctionCallResultFrame",
    "FunctionCallsStartedFrame",
    "LLMContextFrame",
    "LLMMessagesAppendFrame",
    "LLMMessagesFrame",
    "LLMMessagesUpdateFrame",
    "LLMRunFrame",
    "TTSSpeakFrame",
    "UtteranceEndFrame",
]


class LLMContextFrame(DataFrame):
    """Run the LLM on ``context`` (a fork the receiver may read on its own thread)."""

    __slots__ = ("context",)

    def __init__(self, context: LLMContext) -> None:
        super().__init__()
        self.context = context

    def __repr__(self) -> str:
        return f"LLMContextFrame({len(self.context)} messages)"


class LLMMessagesFrame(DataFrame):
    """Run the LLM on these messages (OpenAI chat format), with no context aggregator."""

    __slots__ = ("messages",)

    def __init__(self, messages: list[Message]) -> None:
        super().__init__()
        self.messages = list(messages)

    def __repr__(self) -> str:
        return f"LLMMessagesFrame({len(self.messages)} messages)"


class LLMMessagesAppendFrame(DataFrame):
    """Add messages to the context; ``run_llm``: then ask the LLM to answer."""

    __slots__ = ("messages", "run_llm")

    def __init__(self, messages: list[Message], run_llm: bool = False) -> None:
        super().__init__()
        self.messages = list(messages)
        self.run_llm = run_llm

    def __repr__(self) -> str:
        return f"LLMMessagesAppendFrame({self.messages!r}, run_llm={self.run_llm})"


class LLMMessagesUpdateFrame(DataFrame):
    """Replace the context's messages; ``run_llm``: then ask the LLM to answer."""

    __slots__ = ("messages", "run_llm")

    def __init__(self, messages: list[Message], run_llm: bool = False) -> None:
        super().__init__()
        self.messages = list(messages)
        self.run_llm = run_llm


class LLMRunFrame(DataFrame):
    """Ask the LLM to answer the context as it is (a greeting before the caller speaks)."""

    __slots__ = ()


class FunctionCallsStartedFrame(SystemFrame):
    """The LLM called these functions (``{"id", "name", "arguments"}``, in its order)."""

    __slots__ = ("calls",)

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        super().__init__()
        self.calls = [dict(c) for c in calls]

    def __repr__(self) -> str:
        return f"FunctionCallsStartedFrame({[c['name'] for c in self.calls]})"


class FunctionCallInProgressFrame(ControlFrame):
    """One function call has started running."""

    __slots__ = ("arguments", "cancel_on_interruption", "function_name", "tool_call_id")

    def __init__(
        self,
        function_name: str,
        tool_call_id: str,
        arguments: Any,
        cancel_on_interruption: bool = True,
    ) -> None:
        super().__init__()
        self.function_name = function_name
        self.tool_call_id = tool_call_id
        self.arguments = arguments
        self.cancel_on_interruption = cancel_on_interruption

    def __repr__(self) -> str:
        return f"FunctionCallInProgressFrame({self.function_name!r}, {self.tool_call_id!r})"


class FunctionCallResultFrame(DataFrame):
    """One function call finished: ``result`` (any JSON value), or ``error`` if it failed
    (malformed arguments, an unknown function, the handler raised or timed out)."""

    __slots__ = ("arguments", "error", "function_name", "result", "tool_call_id")

    def __init__(
        self,
        function_name: str,
        tool_call_id: str,
        arguments: Any,
        result: Any,
        error: str | None = None,
    ) -> None:
        super().__init__()
        self.function_name = function_name
        self.tool_call_id = tool_call_id
        self.arguments = arguments
        self.result = result
        self.error = error

    def __repr__(self) -> str:
        what = f"error={self.error!r}" if self.error else f"result={self.result!r}"
        return f"FunctionCallResultFrame({self.function_name!r}, {self.tool_call_id!r}, {what})"


class FunctionCallCancelFrame(SystemFrame):
    """A function call was cancelled by an interruption."""

    __slots__ = ("function_name", "tool_call_id")

    def __init__(self, function_name: str, tool_call_id: str) -> None:
        super().__init__()
        self.function_name = function_name
        self.tool_call_id = tool_call_id

    def __repr__(self) -> str:
        return f"FunctionCallCancelFrame({self.function_name!r}, {self.tool_call_id!r})"


class TTSSpeakFrame(DataFrame):
    """Say ``text`` (a fallback, a greeting): the TTS speaks it as one utterance."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def __repr__(self) -> str:
        return f"TTSSpeakFrame({self.text!r})"


class UtteranceEndFrame(ControlFrame):
    """The STT's provider heard the user's utterance end (Deepgram's ``speech_final`` or
    ``UtteranceEnd``): the final transcripts pushed before this frame are the whole turn,
    with no more to wait for."""

    __slots__ = ()
