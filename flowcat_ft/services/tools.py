"""Function calling: a registry of tools the LLM may call, with JSON schemas, and running
the calls it makes.

A tool is a name, a description, a JSON schema for its arguments (an ``object``), a handler
and three policies: ``cancel_on_interruption`` (True: a barge-in cancels the call with the
rest of the response; False: the call runs on and its result still goes into the context),
``timeout`` (seconds) and ``ends_call`` (True: once the tool has run, the phone call ends
after the reply being made has been said, as a person hangs up after saying goodbye;
:func:`end_call_tool` is the ready-made one). A handler takes the arguments as a dict
and returns any JSON value; it may be a coroutine function (run on the service's event
loop, so it must not block) or a plain function (run in a worker thread)::

    tools = ToolRegistry()

    @tools.tool(
        description="The weather in a city",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    )
    async def get_weather(args):
        return {"city": args["city"], "forecast": "sunny"}

:meth:`ToolRegistry.run` never raises for a bad call: arguments that are not JSON, an
unknown tool, arguments that break the schema, a handler that raises or times out all give a
:class:`ToolResult` with ``error`` set, which the LLM service reports as an error frame and
feeds back to the LLM as the call's result, while the other calls of the same turn go on.

The schema check is a small subset of JSON Schema, enough to catch a model's mistakes:
``type``, ``properties``, ``required``, ``additionalProperties: false``, ``enum``,
``items``, ``minimum``/``maximum`` and ``minLength``/``maxLength``.

Threading: register tools before calls start; afterwards the registry is only read, from
any event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Tool", "ToolCall", "ToolRegistry", "ToolResult", "end_call_tool", "validate"]

Handler = Callable[[dict[str, Any]], Any]

_EMPTY_OBJECT = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    name: str
    handler: Handler
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: dict(_EMPTY_OBJECT))
    cancel_on_interruption: bool = True
    timeout: float | None = 10.0
    ends_call: bool = False

    def openai_schema(self) -> dict[str, Any]:
        """The tool as OpenAI's chat completions API lists it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def anthropic_schema(self) -> dict[str, Any]:
        """The tool as Anthropic's Messages API lists it."""
        return {"name": self.name, "description": self.description, "input_schema": self.parameters}

    def realtime_schema(self) -> dict[str, Any]:
        """The tool as the OpenAI Realtime API's ``session.update`` lists it."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


def end_call_tool() -> Tool:
    """A tool that lets the model hang up: ``end_call``, with no arguments, which ends the
    call once the reply being made (the model's goodbye) has been said."""
    return Tool(
        "end_call",
        lambda args: "The call ends once your reply has been said.",
        "End the phone call. Call it when the caller says goodbye or asks to hang up, "
        "together with your goodbye.",
        ends_call=True,
    )


@dataclass(frozen=True)
class ToolCall:
    """One call the LLM made: ``arguments`` is the JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    result: Any = None
    error: str | None = None
    arguments: Any = None
    """The arguments as parsed (None if they were not JSON)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def content(self) -> str:
        """What goes back to the LLM: the result as JSON (a string as it is), or the error."""
        if self.error is not None:
            return json.dumps({"error": self.error})
        return self.result if isinstance(self.result, str) else json.dumps(self.result)


class ToolRegistry:
    """The tools one agent offers (shared by every call of a pipeline)."""

    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools or ():
            self.add(tool)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is registered already")
        if tool.parameters.get("type", "object") != "object":
            raise ValueError(f"{tool.name}: a tool's parameters schema must be an object")
        self._tools[tool.name] = tool
        return tool

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        description: str = "",
        parameters: dict[str, Any] | None = None,
        cancel_on_interruption: bool = True,
        timeout: float | None = 10.0,
        ends_call: bool = False,
    ) -> Tool:
        return self.add(
            Tool(
                name,
                handler,
                description,
                parameters or dict(_EMPTY_OBJECT),
                cancel_on_interruption,
                timeout,
                ends_call,
            )
        )

    def tool(
        self,
        name: str | None = None,
        *,
        description: str = "",
        parameters: dict[str, Any] | None = None,
        cancel_on_interruption: bool = True,
        timeout: float | None = 10.0,
        ends_call: bool = False,
    ) -> Callable[[Handler], Handler]:
        """A decorator registering the function (under its own name unless given one)."""

        def decorate(handler: Handler) -> Handler:
            self.register(
                name or handler.__name__,
                handler,
                description=description or inspect.getdoc(handler) or "",
                parameters=parameters,
                cancel_on_interruption=cancel_on_interruption,
                timeout=timeout,
                ends_call=ends_call,
            )
            return handler

        return decorate

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self, style: str = "openai") -> list[dict[str, Any]]:
        """Every tool's schema in a provider's style: ``"openai"``, ``"anthropic"`` or
        ``"realtime"``."""
        method = {
            "openai": Tool.openai_schema,
            "anthropic": Tool.anthropic_schema,
            "realtime": Tool.realtime_schema,
        }[style]
        return [method(tool) for tool in self._tools.values()]

    def check(self, call: ToolCall) -> tuple[Tool | None, Any, str | None]:
        """The tool, the parsed arguments and the reason the call is malformed (or None)."""
        tool = self._tools.get(call.name)
        if tool is None:
            return None, None, f"unknown function {call.name!r}"
        text = call.arguments.strip() or "{}"
        try:
            arguments = json.loads(text)
        except ValueError as error:
            return tool, None, f"arguments are not valid JSON ({error.msg})"
        problems = validate(tool.parameters, arguments)
        if problems:
            return tool, arguments, "invalid arguments: " + "; ".join(problems[:5])
        return tool, arguments, None

    async def run(self, call: ToolCall) -> ToolResult:
        """Run one call; see the module docstring (only cancellation propagates)."""
        tool, arguments, problem = self.check(call)
        if problem is not None or tool is None:
            return ToolResult(call, error=problem, arguments=arguments)
        handler = tool.handler
        try:
            if inspect.iscoroutinefunction(handler):
                pending = handler(arguments)
            else:
                pending = asyncio.to_thread(handler, arguments)
            result = await asyncio.wait_for(pending, tool.timeout)
            if inspect.isawaitable(result):  # a plain function that returned a coroutine
                result = await asyncio.wait_for(result, tool.timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return ToolResult(
                call, error=f"{call.name} timed out after {tool.timeout:g} s", arguments=arguments
            )
        except Exception as error:
            return ToolResult(
                call,
                error=f"{call.name} failed: {type(error).__name__}: {error}",
                arguments=arguments,
            )
        try:
            json.dumps(result)
        except (TypeError, ValueError):
            result = str(result)
        return ToolResult(call, result=result, arguments=arguments)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(schema: dict[str, Any], value: Any, path: str = "$") -> list[str]:
    """What is wrong with ``value`` under ``schema`` (the subset in the module docstring)."""
    problems: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
            return [f"{path} should be {' or '.join(kinds)}, not {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path} should be one of {schema['enum']!r}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                problems.append(f"{path}.{name} is required")
        for name, item in value.items():
            if name in properties:
                problems += validate(properties[name], item, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{path}.{name} is not an allowed property")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += validate(schema["items"], item, f"{path}[{i}]")
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{path} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{path} is longer than {schema['maxLength']}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path} is above {schema['maximum']}")
    return problems
