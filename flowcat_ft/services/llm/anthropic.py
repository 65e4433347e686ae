"""Anthropic's Messages API, streamed, with tools.

Wire format (https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming): ``POST /v1/messages`` with
``x-api-key``, ``anthropic-version: 2023-06-01`` and a JSON body of ``model``,
``max_tokens``, ``system`` (a string), ``messages`` (alternating ``user`` / ``assistant``,
content as a string or a list of blocks: ``text``, ``tool_use`` with ``id``, ``name``,
``input``; ``tool_result`` with ``tool_use_id`` and ``content``), ``tools`` (``name``,
``description``, ``input_schema``) and ``stream: true``. The response is an event stream
of named events, each ``data`` a JSON object whose ``type`` repeats the name:

- ``message_start`` (``message.usage.input_tokens``);
- ``content_block_start`` (``index``, ``content_block``: ``{"type": "text"}`` or
  ``{"type": "tool_use", "id", "name", "input": {}}``);
- ``content_block_delta`` (``index``, ``delta``: ``text_delta`` with ``text``, or
  ``input_json_delta`` with ``partial_json``, the tool input's JSON in pieces);
- ``content_block_stop`` (``index``);
- ``message_delta`` (``delta.stop_reason``, ``usage.output_tokens``);
- ``message_stop``; ``ping`` (ignored); ``error`` (``error.type``, ``error.message``:
  ``overloaded_error`` and others, mid-stream). Other event types may be added: they are
  ignored, as the documentation asks.

Context messages are kept in the OpenAI format (:mod:`flowcat_ft.services.context`);
:func:`to_anthropic` converts them: system messages become ``system``, tool calls become
``tool_use`` blocks, tool messages become ``tool_result`` blocks in a user message, and
consecutive messages of one role are merged, since the API wants the roles to alternate.

The Sans-I/O part is :func:`messages_request`, :func:`to_anthropic` and
:class:`MessagesStreamDecoder`; :class:`AnthropicLLMService` is the I/O around them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from flowcat_ft.services.context import Message
from flowcat_ft.services.llm.base import (
    Completion,
    HTTPStreamingLLMService,
    LLMProtocolError,
    LLMProviderError,
    TextDelta,
)
from flowcat_ft.services.net.auth import Secret
from flowcat_ft.services.net.auth import api_key as find_api_key
from flowcat_ft.services.net.errors import json_object
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.net.sse import SSEEvent
from flowcat_ft.services.tools import ToolCall, ToolRegistry

__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicLLMService",
    "MessagesStreamDecoder",
    "messages_request",
    "to_anthropic",
]

ANTHROPIC_VERSION = "2023-06-01"

START_MESSAGE = "(The call has started.)"
"""The user turn put first when a conversation has none (the API wants one first)."""


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def to_anthropic(messages: list[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI-format messages → (``system``, Anthropic ``messages``)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": list(blocks)})

    for message in messages:
        role = message.get("role")
        if role == "system":
            text = _block_text(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            text = _block_text(message.get("content"))
            add("user", [{"type": "text", "text": text}] if text else [])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = _block_text(message.get("content"))
            if text:
                blocks.append({"type": "text", "text": text})
            for call in message.get("tool_calls") or ():
                function = call.get("function", {})
                try:
                    arguments = json.loads(function.get("arguments") or "{}")
                except ValueError:
                    arguments = {}
                if not isinstance(arguments, dict):
                    arguments = {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id", ""),
                        "name": function.get("name", ""),
                        "input": arguments,
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.get("tool_call_id", ""),
                        "content": _block_text(message.get("content")),
                    }
                ],
            )
    if not out or out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": START_MESSAGE}]})
    return ("\n\n".join(system) or None), out


def _anthropic_tools(tools: list[dict]) -> list[dict[str, Any]]:
    """Tool schemas in either style → Anthropic's."""
    out = []
    for tool in tools:
        if "input_schema" in tool:
            out.append(tool)
        else:
            function = tool.get("function", tool)
            out.append(
                {
                    "name": function["name"],
                    "description": function.get("description", ""),
                    "input_schema": function.get("parameters", {"type": "object"}),
                }
            )
    return out


def messages_request(
    model: str,
    messages: list[Message],
    tools: list[dict] | None = None,
    tool_choice: str | dict | None = None,
    max_tokens: int = 1024,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of a streamed Messages API request."""
    system, converted = to_anthropic(messages)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": converted,
        "stream": True,
    }
    if system:
        body["system"] = system
    if tools:
        body["tools"] = _anthropic_tools(tools)
        if isinstance(tool_choice, str):
            body["tool_choice"] = {"type": {"required": "any"}.get(tool_choice, tool_choice)}
        elif tool_choice is not None:
            body["tool_choice"] = tool_choice
    body.update(params or {})
    return body


class MessagesStreamDecoder:
    """One streamed message: :meth:`feed` each event, then :meth:`finish`."""

    def __init__(self) -> None:
        self.done = False
        self._text: list[str] = []
        self._blocks: dict[int, dict[str, Any]] = {}
        self._stop_reason: str | None = None
        self._input_tokens = 0
        self._output_tokens = 0

    def feed(self, event: str, data: str) -> list[TextDelta]:
        """The text deltas of one event (``event`` is the SSE event name)."""
        payload = json_object(data, "a stream event", LLMProtocolError)
        kind = payload.get("type") or event
        if kind == "error" or event == "error":
            error = payload.get("error") or {}
            if isinstance(error, dict):
                raise LLMProviderError(
                    f"the provider reported {error.get('type', 'an error')}: "
                    f"{error.get('message', '')}"
                )
            raise LLMProviderError(f"the provider reported an error: {error}")
        try:
            return self._handle(kind, payload)
        except (KeyError, TypeError, AttributeError) as error:
            raise LLMProtocolError(f"a malformed {kind} event: {data[:80]!r}") from error

    def _handle(self, kind: str, payload: dict[str, Any]) -> list[TextDelta]:
        if kind == "message_start":
            usage = payload["message"].get("usage") or {}
            self._input_tokens = int(usage.get("input_tokens") or 0)
            self._output_tokens = int(usage.get("output_tokens") or 0)
        elif kind == "content_block_start":
            block = payload["content_block"]
            self._blocks[int(payload["index"])] = {
                "type": block["type"],
                "id": block.get("id", ""),
                "name": block.get("name", ""),
                "json": [],
                "input": block.get("input"),
            }
        elif kind == "content_block_delta":
            index = int(payload["index"])
            delta = payload["delta"]
            if delta["type"] == "text_delta":
                text = delta["text"]
                if text:
                    self._text.append(text)
                    return [TextDelta(text)]
            elif delta["type"] == "input_json_delta":
                block = self._blocks.get(index)
                if block is None:
                    raise LLMProtocolError(f"input_json_delta for block {index}, never started")
                block["json"].append(delta["partial_json"])
        elif kind == "message_delta":
            self._stop_reason = payload.get("delta", {}).get("stop_reason") or self._stop_reason
            usage = payload.get("usage") or {}
            if "output_tokens" in usage:
                self._output_tokens = int(usage["output_tokens"] or 0)
        elif kind == "message_stop":
            self.done = True
        # content_block_stop, ping and event types added later carry nothing needed here.
        return []

    def finish(self) -> Completion:
        if not self.done:
            raise LLMProtocolError("the stream ended before message_stop")
        calls = []
        for _, block in sorted(self._blocks.items()):
            if block["type"] != "tool_use":
                continue
            if block["json"]:
                arguments = "".join(block["json"])
            else:
                arguments = json.dumps(block["input"] or {})
            calls.append(ToolCall(block["id"], block["name"], arguments))
        return Completion(
            "".join(self._text), calls, self._stop_reason, self._input_tokens, self._output_tokens
        )


class AnthropicLLMService(HTTPStreamingLLMService):
    """Claude through the Messages API (key from ``ANTHROPIC_API_KEY`` unless given)."""

    schema_style = "anthropic"

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "https://api.anthropic.com",
        api_key: str | Secret | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        max_tokens: int = 1024,
        params: Mapping[str, Any] | None = None,
        tools: ToolRegistry | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tools=tools, timeouts=timeouts, retry=retry, **kwargs)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._key = find_api_key(api_key_env, api_key)
        self.max_tokens = max_tokens
        self.params = dict(params or {})

    async def _complete(
        self,
        messages: list[Message],
        tools: list[dict] | None,
        tool_choice: str | dict | None,
        on_text: Callable[[str], None],
    ) -> Completion:
        body = messages_request(
            self.model, messages, tools, tool_choice, self.max_tokens, self.params
        )
        headers: dict[str, str | Secret] = {
            "x-api-key": self._key,
            "anthropic-version": ANTHROPIC_VERSION,
            "Accept": "text/event-stream",
        }
        decoder = MessagesStreamDecoder()

        def on_event(event: SSEEvent) -> bool:
            for delta in decoder.feed(event.event, event.data):
                on_text(delta.text)
            return decoder.done

        await self._post_stream(f"{self.base_url}/v1/messages", headers, body, on_event)
        return decoder.finish()
