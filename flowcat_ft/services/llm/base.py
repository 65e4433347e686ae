"""The LLM service: a conversation in, streamed text and function calls out.

:class:`LLMService` is the protocol-independent part; a client for one wire protocol
(:mod:`~flowcat_ft.services.llm.openai`, :mod:`~flowcat_ft.services.llm.anthropic`)
implements :meth:`LLMService._complete`: one streamed request, text handed out as it
arrives through ``on_text``, the function calls and usage returned at its end.

One response, as frames: :class:`~flowcat_ft.frames.LLMFullResponseStartFrame`, the
:class:`~flowcat_ft.frames.LLMTextFrame`\\ s as tokens arrive, then
:class:`~flowcat_ft.frames.LLMFullResponseEndFrame`. If the model calls functions, the
response stays open (the bot keeps the turn): the calls run in parallel on the service's
event loop (:class:`~flowcat_ft.services.tools.ToolRegistry`), their results are fed back
and the model is asked again, up to ``max_tool_rounds`` times. The calls and their results
go upstream as frames to the context aggregator, which records them. A tool marked
``ends_call`` (:func:`~flowcat_ft.services.tools.end_call_tool`) ends the call once it has
run: the response is finished and said first (see the end, below).

An interruption (or a newer context) cancels the response: the provider's stream is closed
(the provider sees the client go away), the calls marked ``cancel_on_interruption`` are
cancelled (their result in the context says so), and those not marked run on, their result
still recorded. A failure (the provider's garbage, a stream closed or stalled mid-way, a
rate limit the retries could not outlast) ends the response with an error frame upstream
and, if configured, a fallback for the TTS to say; the call goes on.

An :class:`~flowcat_ft.frames.EndFrame` does not cut a response off: it waits in the
service until the response is complete, function calls in flight and the model's answer
to their results included, as pipecat lets the LLM finish (see
:attr:`~flowcat_ft.services.base.AsyncService.drain_on_end`; ``end_timeout`` bounds the
wait), so the TTS downstream gets the whole reply before the end. Calls an interruption
left running (those not marked ``cancel_on_interruption``) are not waited for. An
interruption meanwhile cuts the response as usual, and a
:class:`~flowcat_ft.frames.CancelFrame` drops it at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowcat_ft.frames import (
    Direction,
    EndFrame,
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from flowcat_ft.services.context import Message
from flowcat_ft.services.llm.frames import (
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    LLMContextFrame,
    LLMMessagesFrame,
    TTSSpeakFrame,
)
from flowcat_ft.services.net.auth import Secret
from flowcat_ft.services.net.errors import ProviderError, ProviderProtocolError
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.net.service import CloudService
from flowcat_ft.services.net.sse import SSEEvent, SSEParser
from flowcat_ft.services.tools import ToolCall, ToolRegistry, ToolResult

__all__ = [
    "Completion",
    "HTTPStreamingLLMService",
    "LLMProtocolError",
    "LLMProviderError",
    "LLMService",
    "TextDelta",
]


class LLMProtocolError(ProviderProtocolError):
    """The provider's stream broke its protocol: not JSON, a wrong shape, cut short."""


class LLMProviderError(ProviderError):
    """The provider reported an error inside the stream."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply's text, as it arrived."""

    text: str


@dataclass
class Completion:
    """What one streamed request produced, once it ended."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLMService(CloudService):
    """Answers :class:`LLMContextFrame` and :class:`LLMMessagesFrame`; see the module
    docstring.

    ``tools``: the functions the model may call (their schemas are sent unless the context
    carries its own); ``max_tool_rounds``: how many times in one response the model may
    call functions and be asked again; ``tool_error_text``: what the TTS should say when a
    function call fails (None: the error goes back to the model only); ``fallback_text``:
    what it should say when the response fails.
    """

    schema_style = "openai"
    cost = 0.5
    drain_on_end = True
    trace_kind = "llm"

    def __init__(
        self,
        *,
        tools: ToolRegistry | None = None,
        max_tool_rounds: int = 4,
        tool_error_text: str | None = None,
        fallback_text: str | None = None,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            name=name, fallback_text=fallback_text, ssl_context=ssl_context, ca_file=ca_file
        )
        self.tools = tools
        self.max_tool_rounds = max_tool_rounds
        self.tool_error_text = tool_error_text

    # -- frames ----------------------------------------------------------------------------

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            if isinstance(frame, LLMContextFrame):
                context = frame.context
                self.respond(context.messages, context.tools, context.tool_choice)
                return
            if isinstance(frame, LLMMessagesFrame):
                self.respond(frame.messages)
                return
        self.push(frame, direction)

    def respond(
        self,
        messages: list[Message],
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
    ) -> None:
        """Start a response to ``messages`` (on the stage thread); a response still in
        flight is cancelled first."""
        if any(not f.done() for f in self._tasks):
            self.cancel_work()
        if tools is None and self.tools is not None and len(self.tools):
            tools = self.tools.schemas(self.schema_style)
        self.push(LLMFullResponseStartFrame())
        messages = list(messages)
        self.start_work(lambda generation: self._respond(generation, messages, tools, tool_choice))

    async def _respond(
        self,
        generation: int,
        messages: list[Message],
        tools: list[dict] | None,
        tool_choice: str | dict | None,
    ) -> None:
        def on_text(text: str) -> None:
            if text:
                self.emit(generation, LLMTextFrame(text))

        model = getattr(self, "model", None)
        if isinstance(model, str):
            self.annotate(**{"gen_ai.request.model": model})
        tokens = [0, 0]  # prompt, completion: for the job's span, over its rounds
        try:
            for round_ in range(self.max_tool_rounds + 1):
                completion = await self._complete(messages, tools, tool_choice, on_text)
                self.count(
                    requests=1,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                )
                tokens[0] += completion.prompt_tokens
                tokens[1] += completion.completion_tokens
                self.annotate(
                    **{
                        "gen_ai.usage.input_tokens": tokens[0],
                        "gen_ai.usage.output_tokens": tokens[1],
                    }
                )
                if not completion.tool_calls:
                    break
                if round_ == self.max_tool_rounds:
                    raise LLMProtocolError(
                        f"the model still called functions after {self.max_tool_rounds} rounds"
                    )
                results = await self._run_tools(generation, completion.tool_calls)
                messages = [*messages, *_tool_messages(completion, results)]
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.report_error(f"{type(error).__name__}: {error}", generation=generation)
        self.emit(generation, LLMFullResponseEndFrame())
        self.call_soon(self._push_metrics, generation)

    def _push_metrics(self, generation: int) -> None:
        if generation == self._generation:
            self.push(self.metrics_frame())

    async def _complete(
        self,
        messages: list[Message],
        tools: list[dict] | None,
        tool_choice: str | dict | None,
        on_text: Callable[[str], None],
    ) -> Completion:
        """One streamed request (a protocol client implements it)."""
        raise NotImplementedError

    # -- function calls ------------------------------------------------------------------------

    async def _run_tools(self, generation: int, calls: list[ToolCall]) -> list[ToolResult]:
        registry = self.tools or ToolRegistry()
        recorded = [{**c.as_dict(), "arguments": _safe_arguments(c.arguments)} for c in calls]
        self.call_soon(self._calls_started, generation, recorded)
        tasks: list[asyncio.Task] = []
        waits = []
        for call in calls:
            tool = registry.get(call.name)
            cancel = tool.cancel_on_interruption if tool is not None else True
            arguments = _loads_or_none(call.arguments)
            self.emit(
                generation, FunctionCallInProgressFrame(call.name, call.id, arguments, cancel)
            )
            task = asyncio.ensure_future(self._run_one(registry, generation, call))
            tasks.append(task)
            waits.append(task if cancel else asyncio.shield(task))
        try:
            return list(await asyncio.gather(*waits))
        except asyncio.CancelledError:
            for call, task, wait in zip(calls, tasks, waits, strict=True):
                if wait is task and not (task.done() and not task.cancelled()):
                    task.cancel()
                    self.call_soon(self._call_cancelled, call)
            raise

    async def _run_one(self, registry: ToolRegistry, generation: int, call: ToolCall) -> ToolResult:
        result = await registry.run(call)
        self.call_soon(self._call_finished, generation, result)
        return result

    def _calls_started(self, generation: int, calls: list[dict[str, Any]]) -> None:
        self.push(FunctionCallsStartedFrame(calls), Direction.UPSTREAM)
        if generation == self._generation:
            self.push(FunctionCallsStartedFrame(calls))

    def _call_finished(self, generation: int, result: ToolResult) -> None:
        call = result.call
        value = result.result if result.ok else {"error": result.error}
        # Upstream whatever the generation: the context records every call's result.
        self.push(
            FunctionCallResultFrame(call.name, call.id, result.arguments, value, result.error),
            Direction.UPSTREAM,
        )
        self.usage["function_calls"] += 1
        if not result.ok:
            self.usage["function_call_errors"] += 1
            self.push(
                ErrorFrame(
                    f"{self.name}: function call {call.id}: {result.error}", processor=self.name
                ),
                Direction.UPSTREAM,
            )
        if generation != self._generation:
            return
        self.push(
            FunctionCallResultFrame(call.name, call.id, result.arguments, value, result.error)
        )
        if not result.ok and self.tool_error_text:
            self.push(TTSSpeakFrame(self.tool_error_text))
        tool = self.tools.get(call.name) if self.tools is not None else None
        if result.ok and tool is not None and tool.ends_call:
            # The call's EndFrame comes back down behind this response: this service
            # drains (the model's answer to the result included), then the TTS and the
            # output play what is left before the call closes.
            self.push(EndFrame(), Direction.UPSTREAM)

    def _call_cancelled(self, call: ToolCall) -> None:
        error = "cancelled: the user interrupted"
        self.push(
            FunctionCallResultFrame(call.name, call.id, None, {"error": error}, error),
            Direction.UPSTREAM,
        )
        self.push(FunctionCallCancelFrame(call.name, call.id))


class HTTPStreamingLLMService(LLMService):
    """An LLM service whose requests are HTTP POSTs answered by an event stream."""

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.timeouts = timeouts or Timeouts(connect=5.0, head=15.0, read=15.0)
        self.retry = retry or RetryPolicy()

    async def _post_stream(
        self,
        url: str,
        headers: dict[str, str | Secret],
        body: dict[str, Any],
        on_event: Callable[[SSEEvent], bool],
    ) -> None:
        """POST ``body`` (with retries) and hand each event of the stream to ``on_event``
        until it returns True (the stream is complete) or the stream ends. Cancelling this
        closes the connection."""
        response = await self.http_request("POST", url, headers=headers, json=body)
        events = SSEParser()
        async with response:
            async for data in response.aiter_bytes():
                for event in events.feed(data):
                    if on_event(event):
                        await response.finish()
                        return
            events.close()


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return None


def _safe_arguments(text: str) -> str:
    """The arguments as JSON text fit for a context (``{}`` where the model's were not)."""
    return text if isinstance(_loads_or_none(text), dict) else "{}"


def _tool_messages(completion: Completion, results: list[ToolResult]) -> list[Message]:
    """The assistant's calls and the tool results, as the next request's messages."""
    assistant: Message = {
        "role": "assistant",
        "content": completion.text or None,
        "tool_calls": [
            {
                "id": r.call.id,
                "type": "function",
                "function": {"name": r.call.name, "arguments": _safe_arguments(r.call.arguments)},
            }
            for r in results
        ],
    }
    return [
        assistant,
        *({"role": "tool", "tool_call_id": r.call.id, "content": r.content()} for r in results),
    ]
