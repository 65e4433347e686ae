"""OpenAI-compatible chat completions, streamed over Server-Sent Events, with tools.

One protocol, many providers: OpenAI, Groq, Together, Ollama, vLLM and others that serve
``POST {base_url}/chat/completions`` differ only in their base URL, key and models, so they
are configuration (:data:`PROVIDERS`), not code.

Wire format (https://platform.openai.com/docs/api-reference/chat/create and
https://platform.openai.com/docs/api-reference/chat-streaming): the request is JSON with
``model``, ``messages``, ``stream: true``, ``stream_options: {"include_usage": true}`` and
``tools`` (``{"type": "function", "function": {"name", "description", "parameters"}}``);
``Authorization: Bearer <key>``. The response is an event stream whose ``data`` lines are
``chat.completion.chunk`` objects: ``choices[0].delta.content`` carries text,
``choices[0].delta.tool_calls`` carries calls in fragments keyed by ``index`` (the ``id``
and ``function.name`` in the first fragment, ``function.arguments`` accreting across
later ones), ``finish_reason`` closes the choice, a last chunk with empty ``choices``
carries ``usage`` (when asked for), and ``data: [DONE]`` ends the stream. A provider that
fails mid-stream sends ``{"error": {"message", "type"}}``.

The Sans-I/O part is :func:`chat_request` (the request body) and
:class:`ChatStreamDecoder` (each event's data in, text deltas out, the calls and usage at
the end); :class:`OpenAILLMService` is the I/O around them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flowcat_ft.services.context import Message
from flowcat_ft.services.llm.base import (
    Completion,
    HTTPStreamingLLMService,
    LLMProtocolError,
    LLMProviderError,
    TextDelta,
)
from flowcat_ft.services.net.auth import Secret, optional_api_key
from flowcat_ft.services.net.errors import json_object
from flowcat_ft.services.net.http import Timeouts
from flowcat_ft.services.net.retry import RetryPolicy
from flowcat_ft.services.net.sse import SSEEvent
from flowcat_ft.services.tools import ToolCall, ToolRegistry

__all__ = ["PROVIDERS", "ChatStreamDecoder", "OpenAILLMService", "Provider", "chat_request"]


@dataclass(frozen=True)
class Provider:
    """Where an OpenAI-compatible provider lives and which variable holds its key (None:
    no key, as for a local server)."""

    base_url: str
    api_key_env: str | None


PROVIDERS: dict[str, Provider] = {
    "openai": Provider("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "groq": Provider("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "together": Provider("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "ollama": Provider("http://localhost:11434/v1", None),
    "vllm": Provider("http://localhost:8000/v1", None),
}


def chat_request(
    model: str,
    messages: list[Message],
    tools: list[dict] | None = None,
    tool_choice: str | dict | None = None,
    params: Mapping[str, Any] | None = None,
    include_usage: bool = True,
) -> dict[str, Any]:
    """The JSON body of a streamed chat completion request."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
    body.update(params or {})
    return body


class ChatStreamDecoder:
    """One streamed completion: :meth:`feed` each event's data, then :meth:`finish`."""

    def __init__(self) -> None:
        self.done = False
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}

    def feed(self, data: str) -> list[TextDelta]:
        """The text deltas one event carries. Raises :class:`LLMProviderError` for an error
        the provider reports, :class:`LLMProtocolError` for anything malformed."""
        if data.strip() == "[DONE]":
            self.done = True
            return []
        chunk = json_object(data, "a stream event", LLMProtocolError)
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise LLMProviderError(f"the provider reported an error: {message}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise LLMProtocolError(f"choices is not a list: {data[:80]!r}")
        out: list[TextDelta] = []
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise LLMProtocolError(f"delta is not an object: {data[:80]!r}")
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text.append(content)
                out.append(TextDelta(content))
            for fragment in delta.get("tool_calls") or ():
                self._tool_fragment(fragment)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def _tool_fragment(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            raise LLMProtocolError(f"a tool call fragment that is not an object: {fragment!r}")
        index = fragment.get("index", len(self._calls))
        call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": []})
        if fragment.get("id"):
            call["id"] = fragment["id"]
        function = fragment.get("function") or {}
        if isinstance(function, dict):
            if function.get("name"):
                call["name"] += function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call["arguments"].append(arguments)
            elif isinstance(arguments, dict):  # some servers send the object itself
                call["arguments"].append(json.dumps(arguments))

    def finish(self) -> Completion:
        """The completion, once the stream has ended; :class:`LLMProtocolError` if it ended
        before ``[DONE]`` or a ``finish_reason`` (the connection closed mid-stream)."""
        if not self.done and self._finish_reason is None:
            raise LLMProtocolError("the stream ended before the completion did")
        calls = [
            ToolCall(c["id"] or f"call_{index}", c["name"], "".join(c["arguments"]))
            for index, c in sorted(self._calls.items())
        ]
        usage = self._usage
        return Completion(
            "".join(self._text),
            calls,
            self._finish_reason,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )


class OpenAILLMService(HTTPStreamingLLMService):
    """An LLM behind an OpenAI-compatible chat completions API.

    ``provider`` picks a base URL and key variable from :data:`PROVIDERS`; ``base_url`` and
    ``api_key_env`` override them; ``api_key`` is used rather than the environment when
    given. ``params`` go into every request (``temperature``, ``max_tokens``...).
    """

    def __init__(
        self,
        *,
        model: str,
        provider: str = "openai",
        base_url: str | None = None,
        api_key: str | Secret | None = None,
        api_key_env: str | None = None,
        params: Mapping[str, Any] | None = None,
        tools: ToolRegistry | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        extra_headers: Mapping[str, str] | None = None,
        include_usage: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(tools=tools, timeouts=timeouts, retry=retry, **kwargs)
        preset = PROVIDERS.get(provider)
        if preset is None and base_url is None:
            raise ValueError(f"unknown provider {provider!r}: give its base_url")
        self.model = model
        self.base_url = (base_url or preset.base_url).rstrip("/")
        env = api_key_env or (preset.api_key_env if preset else None)
        self._key = optional_api_key(env, api_key)
        self.params = dict(params or {})
        self.extra_headers = dict(extra_headers or {})
        self.include_usage = include_usage

    def _headers(self) -> dict[str, str | Secret]:
        headers: dict[str, str | Secret] = {"Accept": "text/event-stream", **self.extra_headers}
        if self._key is not None:
            headers["Authorization"] = Secret(f"Bearer {self._key.reveal()}")
        return headers

    async def _complete(
        self,
        messages: list[Message],
        tools: list[dict] | None,
        tool_choice: str | dict | None,
        on_text: Callable[[str], None],
    ) -> Completion:
        body = chat_request(
            self.model, messages, tools, tool_choice, self.params, self.include_usage
        )
        decoder = ChatStreamDecoder()

        def on_event(event: SSEEvent) -> bool:
            for delta in decoder.feed(event.data):
                on_text(delta.text)
            return decoder.done

        await self._post_stream(
            f"{self.base_url}/chat/completions", self._headers(), body, on_event
        )
        return decoder.finish()
