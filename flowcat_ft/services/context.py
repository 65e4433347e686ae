"""The conversation an LLM sees: one call's messages, its system prompt and its tools.

Messages are kept in the OpenAI chat format, the lingua franca of LLM APIs (and pipecat's
``OpenAILLMContext``): dicts with a ``role`` of ``"system"``, ``"user"``, ``"assistant"``
or ``"tool"``; an assistant message may carry ``tool_calls`` (``{"id", "type":
"function", "function": {"name", "arguments"}}`` with the arguments as a JSON string) and
each tool message answers one of them by ``tool_call_id``. A client for another wire format
(Anthropic's Messages API) converts from this one when it builds a request.

Ownership: a context belongs to one processor of one call (the user context aggregator, see
:mod:`flowcat_ft.services.aggregators`), which changes it on its stage thread only. Others
get a :meth:`LLMContext.fork` (or a :meth:`LLMContext.snapshot`): a new list of the same
message dicts. A message dict is never changed once it is in a context
(:meth:`LLMContext.set_tool_result` replaces the dict), so what another thread was handed
stays as it was when it was taken.

Written by the cloud services (``services/llm``, ``aggregators.py``, ``tools.py``) for any
service set to share; the offline set does not use it today.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["IN_PROGRESS", "LLMContext", "Message"]

Message = dict[str, Any]

IN_PROGRESS = "IN_PROGRESS"
"""The content of a tool message whose call has not finished yet."""


class LLMContext:
    """The messages of one conversation, with the tool schemas the LLM may call.

    ``tools`` are in the OpenAI format (``{"type": "function", "function": {"name",
    "description", "parameters"}}``) or None; ``tool_choice`` is passed through to
    providers that take one (``"auto"``, ``"none"``, ``"required"``).
    """

    def __init__(
        self,
        messages: Iterable[Message] | None = None,
        *,
        system_prompt: str | None = None,
        tools: Sequence[dict] | None = None,
        tool_choice: str | dict | None = None,
    ) -> None:
        self._messages: list[Message] = [dict(m) for m in messages or ()]
        if system_prompt is not None:
            self.system_prompt = system_prompt
        self.tools = list(tools) if tools else None
        self.tool_choice = tool_choice

    # -- reading ---------------------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        """The messages, in order (a new list; do not change the dicts)."""
        return list(self._messages)

    def snapshot(self) -> list[Message]:
        """The messages as they are now, safe to hand to another thread."""
        return list(self._messages)

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def system_prompt(self) -> str | None:
        """The content of the leading system message, if there is one."""
        if self._messages and self._messages[0].get("role") == "system":
            return self._messages[0].get("content")
        return None

    @system_prompt.setter
    def system_prompt(self, text: str | None) -> None:
        has = bool(self._messages) and self._messages[0].get("role") == "system"
        if text is None:
            if has:
                del self._messages[0]
        elif has:
            self._messages[0] = {"role": "system", "content": text}
        else:
            self._messages.insert(0, {"role": "system", "content": text})

    def fork(self) -> LLMContext:
        """A new context holding the same message dicts, for another thread to read (and
        to add its own messages to, which this one does not see)."""
        other = LLMContext(tool_choice=self.tool_choice)
        other._messages = list(self._messages)
        other.tools = self.tools
        return other

    def copy(self) -> LLMContext:
        """An independent copy (messages deep-copied)."""
        other = LLMContext(copy.deepcopy(self._messages), tool_choice=self.tool_choice)
        other.tools = copy.deepcopy(self.tools)
        return other

    # -- writing (the owner's stage thread only) -----------------------------------------------

    def add_message(self, message: Message) -> None:
        if "role" not in message:
            raise ValueError(f"a message needs a role: {message!r}")
        self._messages.append(dict(message))

    def add_messages(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self.add_message(message)

    def set_messages(self, messages: Iterable[Message]) -> None:
        """Replace every message (the system prompt too, if ``messages`` has one)."""
        self._messages = []
        self.add_messages(messages)

    def add_user_message(self, text: str) -> None:
        self._messages.append({"role": "user", "content": text})

    def add_assistant_message(self, text: str) -> None:
        self._messages.append({"role": "assistant", "content": text})

    def add_tool_calls(self, calls: Sequence[dict], content: str | None = None) -> None:
        """Record that the assistant called tools: one assistant message carrying every call
        (``{"id", "name", "arguments"}``, arguments a JSON string or a dict), then one tool
        message per call holding :data:`IN_PROGRESS` until :meth:`set_tool_result`."""
        tool_calls = []
        for call in calls:
            arguments = call.get("arguments", "{}")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            tool_calls.append(
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": arguments},
                }
            )
        self._messages.append({"role": "assistant", "content": content, "tool_calls": tool_calls})
        for call in calls:
            self._messages.append(
                {"role": "tool", "tool_call_id": call["id"], "content": IN_PROGRESS}
            )

    def set_tool_result(self, tool_call_id: str, result: Any) -> bool:
        """Put the result of a tool call in place of its :data:`IN_PROGRESS` message (the
        tool message stays right after the call, however many messages came since). A
        result that is not a string is stored as JSON. False if no such call is waiting."""
        content = result if isinstance(result, str) else json.dumps(result)
        for i in range(len(self._messages) - 1, -1, -1):
            message = self._messages[i]
            if message.get("role") == "tool" and message.get("tool_call_id") == tool_call_id:
                self._messages[i] = {**message, "content": content}
                return True
        return False

    def __repr__(self) -> str:
        return f"<LLMContext {len(self._messages)} messages, {len(self.tools or ())} tools>"
