"""A declarative conversation graph, the offline stand-in for an LLM.

A graph is written in YAML::

    start: welcome                 # the node a call starts at; its reply greets the caller
    fallback: "Sorry, I did not catch that."   # said when nothing the caller says matches
    slots:                         # {slot} defaults; the call's StartFrame.metadata overrides
      caller: there
    nodes:
      welcome:
        reply: "Hello {caller}! How can I help?"
      time:
        tool: time_of_day          # a registered Python function; its result is {time_of_day}
        reply: "It is {time_of_day}."
        next: welcome              # where to listen after replying (default: this node)
      goodbye:
        reply: "Goodbye!"
        end: true                  # the call ends once the reply has been heard
    edges:                         # listened for at every node, after the node's own edges
      - to: time
        phrases: [what time is it] # what the caller may say (these also make the grammar
        keywords: [time]           # of the offline speech recogniser); a keyword is one
      - to: goodbye                # word anywhere in what was said
        phrases: [goodbye]
        interrupts: true           # saying it over the bot cuts the bot off

A node may have ``edges`` of its own, tried before the graph's. What the caller said
matches an edge when it *is* one of its phrases (best), *contains* one (the longest
wins), or contains one of its keywords; ties go to the edge listed first.

What the caller says over the bot interrupts it when it has two words or more, or holds
a phrase of an edge marked ``interrupts: true`` (and "stop" and "goodbye" always do: see
:mod:`flowcat_ft.services.barge_in`); anything shorter is answered once the bot has
finished.

Tools are Python callables ``tool(slots) -> value`` (or coroutines): the result is the
slot named after the tool, and a dict result also updates the slots with its items. A
template may use the slots declared under ``slots`` and its node's tool. Every mistake in
the file (YAML syntax, an unknown field, a wrong type, an edge to a missing node, an
unknown tool or slot) is a :class:`GraphError` naming the file, the line and the field.
"""

from __future__ import annotations

import inspect
import string
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from flowcat_ft.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
)
from flowcat_ft.services.base import AsyncService
from flowcat_ft.services.offline.sphinx_worker import words

__all__ = [
    "DEFAULT_TOOLS",
    "ConversationGraph",
    "Edge",
    "GraphError",
    "GraphLLM",
    "Node",
    "load_graph",
    "time_of_day",
]

Tool = Callable[[Mapping[str, Any]], Any]


def time_of_day(slots: Mapping[str, Any]) -> str:
    """The local time, as a speaker would say it: ``"3:05 PM"``."""
    now = time.localtime()
    return f"{(now.tm_hour - 1) % 12 + 1}:{now.tm_min:02d} {'AM' if now.tm_hour < 12 else 'PM'}"


DEFAULT_TOOLS: dict[str, Tool] = {"time_of_day": time_of_day}
"""Tools every graph may call; :func:`load_graph` adds (or overrides) its own."""


class GraphError(ValueError):
    """A mistake in a graph file: ``source``, ``line`` (1-based, or None), ``field``."""

    def __init__(self, source: str, line: int | None, field: str, problem: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.problem = problem
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {field}: {problem}")


@dataclass(frozen=True, slots=True)
class Edge:
    """Where the conversation goes when the caller says one of ``phrases`` or ``keywords``."""

    to: str
    phrases: tuple[str, ...]
    keywords: tuple[str, ...]
    interrupts: bool = False

    def score(self, heard: str) -> int:
        """How well *heard* (normalised words, space-separated) matches; 0 for not at all."""
        best = 0
        padded = f" {heard} "
        for phrase in self.phrases:
            if heard == phrase:
                best = max(best, 10_000 + len(phrase))
            elif f" {phrase} " in padded:
                best = max(best, 1_000 + len(phrase))
        heard_words = set(heard.split())
        for keyword in self.keywords:
            if keyword in heard_words:
                best = max(best, 1 + len(keyword))
        return best


@dataclass(frozen=True, slots=True)
class Node:
    """A point in the conversation: what the agent says on arriving, and where it goes."""

    name: str
    reply: str | None = None
    tool: str | None = None
    next: str | None = None
    edges: tuple[Edge, ...] = ()
    end: bool = False


@dataclass(frozen=True, slots=True)
class ConversationGraph:
    """A loaded, checked graph. Immutable: every call of a pipeline shares one."""

    nodes: Mapping[str, Node]
    start: str
    fallback: str
    slots: Mapping[str, str]
    edges: tuple[Edge, ...]
    tools: Mapping[str, Tool]
    source: str = "<string>"

    @property
    def phrases(self) -> list[str]:
        """Everything the graph listens for: the speech recogniser's grammar."""
        seen: dict[str, None] = {}
        for edge in self._all_edges():
            for phrase in (*edge.phrases, *edge.keywords):
                seen[phrase] = None
        return list(seen)

    @property
    def interrupt_phrases(self) -> list[str]:
        """The phrases and keywords of the edges marked ``interrupts``: said over the bot,
        however short, they cut it off."""
        seen: dict[str, None] = {}
        for edge in self._all_edges():
            if edge.interrupts:
                for phrase in (*edge.phrases, *edge.keywords):
                    seen[phrase] = None
        return list(seen)

    def _all_edges(self) -> list[Edge]:
        return [e for node in self.nodes.values() for e in node.edges] + list(self.edges)

    def match(self, node: str, text: str) -> Edge | None:
        """The edge out of *node* that *text* (what the caller said) takes, if any."""
        heard = " ".join(words(text))
        best, best_score = None, 0
        for edge in (*self.nodes[node].edges, *self.edges):
            score = edge.score(heard)
            if score > best_score:
                best, best_score = edge, score
        return best

    @classmethod
    def from_yaml(
        cls, text: str, source: str = "<string>", tools: Mapping[str, Tool] | None = None
    ) -> ConversationGraph:
        """Load a graph from YAML *text*; *source* names it in errors."""
        return _Loader(source, {**DEFAULT_TOOLS, **(tools or {})}).load(text)


def load_graph(path: str | Path, tools: Mapping[str, Tool] | None = None) -> ConversationGraph:
    """Load the graph in the YAML file *path*; *tools* adds to :data:`DEFAULT_TOOLS`."""
    path = Path(path)
    return ConversationGraph.from_yaml(path.read_text(encoding="utf-8"), str(path), tools)


# -- loading --------------------------------------------------------------------------------

_GRAPH_FIELDS = {"start", "fallback", "slots", "nodes", "edges"}
_NODE_FIELDS = {"reply", "tool", "next", "edges", "end"}
_EDGE_FIELDS = {"to", "phrases", "keywords", "interrupts"}
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"


class _Loader:
    """Builds a graph from YAML's node tree, which keeps each value's line."""

    def __init__(self, source: str, tools: Mapping[str, Tool]) -> None:
        self.source = source
        self.tools = tools

    def error(self, node: yaml.Node | None, field: str, problem: str) -> GraphError:
        line = node.start_mark.line + 1 if node is not None else None
        return GraphError(self.source, line, field, problem)

    def load(self, text: str) -> ConversationGraph:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = " ".join(p for p in (error.context, error.problem) if p)
            raise GraphError(self.source, line, "YAML", problem or str(error)) from None
        except yaml.YAMLError as error:
            raise GraphError(self.source, None, "YAML", str(error)) from None
        if root is None:
            raise GraphError(self.source, None, "graph", "the file is empty")
        fields = self.mapping(root, "graph", _GRAPH_FIELDS, required={"start", "nodes"})

        slots: dict[str, str] = {}
        if "slots" in fields:
            for name, (key, value) in self.mapping(fields["slots"][1], "slots").items():
                if not name.isidentifier():
                    raise self.error(key, f"slots.{name}", "a slot name must be an identifier")
                slots[name] = self.text(value, f"slots.{name}")

        nodes_node = fields["nodes"][1]
        node_fields = self.mapping(nodes_node, "nodes")
        if not node_fields:
            raise self.error(nodes_node, "nodes", "a graph needs at least one node")
        names = set(node_fields)
        nodes = {
            name: self.node(name, value, names, slots) for name, (_, value) in node_fields.items()
        }

        start_node = fields["start"][1]
        start = self.text(start_node, "start")
        if start not in names:
            raise self.error(start_node, "start", f"no node named {start!r}")
        edges = ()
        if "edges" in fields:
            edges = self.edges(fields["edges"][1], "edges", names)
        fallback = "Sorry, I did not understand."
        if "fallback" in fields:
            fallback_node = fields["fallback"][1]
            fallback = self.text(fallback_node, "fallback")
            self.template(fallback_node, "fallback", fallback, set(slots))
        return ConversationGraph(nodes, start, fallback, slots, edges, self.tools, self.source)

    def node(self, name: str, yaml_node: yaml.Node, names: set[str], slots: dict) -> Node:
        field = f"nodes.{name}"
        if yaml_node.tag == _NULL:
            return Node(name)
        fields = self.mapping(yaml_node, field, _NODE_FIELDS)
        tool = None
        if "tool" in fields:
            tool_node = fields["tool"][1]
            tool = self.text(tool_node, f"{field}.tool")
            if tool not in self.tools:
                known = ", ".join(sorted(self.tools)) or "none"
                raise self.error(
                    tool_node, f"{field}.tool", f"no tool named {tool!r} (registered: {known})"
                )
        reply = None
        if "reply" in fields:
            reply_node = fields["reply"][1]
            reply = self.text(reply_node, f"{field}.reply")
            allowed = set(slots) | ({tool} if tool else set())
            self.template(reply_node, f"{field}.reply", reply, allowed)
        next_name = None
        if "next" in fields:
            next_node = fields["next"][1]
            next_name = self.text(next_node, f"{field}.next")
            if next_name not in names:
                raise self.error(next_node, f"{field}.next", f"no node named {next_name!r}")
        edges = ()
        if "edges" in fields:
            edges = self.edges(fields["edges"][1], f"{field}.edges", names)
        end = self.flag(fields, "end", field)
        return Node(name, reply, tool, next_name, edges, end)

    def edges(self, yaml_node: yaml.Node, field: str, names: set[str]) -> tuple[Edge, ...]:
        if not isinstance(yaml_node, yaml.SequenceNode):
            raise self.error(yaml_node, field, "expected a list of edges")
        edges = []
        for i, item in enumerate(yaml_node.value):
            where = f"{field}[{i}]"
            fields = self.mapping(item, where, _EDGE_FIELDS, required={"to"})
            to_node = fields["to"][1]
            to = self.text(to_node, f"{where}.to")
            if to not in names:
                raise self.error(to_node, f"{where}.to", f"no node named {to!r}")
            phrases = self.phrases(fields, "phrases", where)
            keywords = self.phrases(fields, "keywords", where, one_word=True)
            if not phrases and not keywords:
                raise self.error(item, where, "an edge needs phrases or keywords")
            edges.append(Edge(to, phrases, keywords, self.flag(fields, "interrupts", where)))
        return tuple(edges)

    def flag(self, fields: dict, name: str, where: str) -> bool:
        """A true or false field (False when absent)."""
        if name not in fields:
            return False
        yaml_node = fields[name][1]
        if yaml_node.tag != _BOOL:
            raise self.error(yaml_node, f"{where}.{name}", "expected true or false")
        return yaml_node.value.lower() in ("true", "yes", "on")

    def phrases(
        self, fields: dict, name: str, where: str, one_word: bool = False
    ) -> tuple[str, ...]:
        """A list of phrases (or one), each normalised as the recogniser spells words."""
        if name not in fields:
            return ()
        yaml_node = fields[name][1]
        items = yaml_node.value if isinstance(yaml_node, yaml.SequenceNode) else [yaml_node]
        result = []
        for i, item in enumerate(items):
            said = " ".join(words(self.text(item, f"{where}.{name}[{i}]")))
            if not said:
                raise self.error(item, f"{where}.{name}[{i}]", "has no words in it")
            if one_word and " " in said:
                raise self.error(item, f"{where}.{name}[{i}]", f"{said!r} is not one word")
            result.append(said)
        return tuple(result)

    def mapping(
        self,
        yaml_node: yaml.Node,
        field: str,
        allowed: set[str] | None = None,
        required: set[str] = frozenset(),
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping's entries by key, checked against *allowed* and *required* keys."""
        if not isinstance(yaml_node, yaml.MappingNode):
            raise self.error(yaml_node, field, "expected a mapping (key: value lines)")
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in yaml_node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.error(key, field, "keys must be plain names")
            name = key.value
            if name in entries:
                raise self.error(key, f"{field}.{name}", "appears twice")
            if allowed is not None and name not in allowed:
                expected = ", ".join(sorted(allowed))
                raise self.error(key, f"{field}.{name}", f"unknown field (expected {expected})")
            entries[name] = (key, value)
        for name in sorted(required - set(entries)):
            raise self.error(yaml_node, f"{field}.{name}", "is missing")
        return entries

    def text(self, yaml_node: yaml.Node, field: str) -> str:
        """A scalar as written (so ``yes`` stays the word, not YAML's boolean)."""
        if not isinstance(yaml_node, yaml.ScalarNode) or yaml_node.tag == _NULL:
            raise self.error(yaml_node, field, "expected text")
        return yaml_node.value

    def template(self, yaml_node: yaml.Node, field: str, text: str, allowed: set[str]) -> None:
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as error:
            raise self.error(yaml_node, field, f"bad template: {error}") from None
        for _, slot, spec, conversion in parsed:
            if slot is None:
                continue
            if spec or conversion or not slot.isidentifier():
                raise self.error(yaml_node, field, f"{{{slot}}}: a slot is written {{name}}")
            if slot not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise self.error(
                    yaml_node,
                    field,
                    f"unknown slot {{{slot}}} (declare it under slots:; known: {known})",
                )


# -- the processor --------------------------------------------------------------------------


class GraphLLM(AsyncService):
    """Answer each final transcript by following a :class:`ConversationGraph`.

    At the start of a call it says the start node's reply (if it has one). Each final
    :class:`~flowcat_ft.frames.TranscriptionFrame` moves the conversation along the edge
    it matches, or gets the fallback reply, and the reply goes downstream as
    :class:`~flowcat_ft.frames.LLMFullResponseStartFrame`,
    :class:`~flowcat_ft.frames.LLMTextFrame`,
    :class:`~flowcat_ft.frames.LLMFullResponseEndFrame`. The transcript goes on at once
    (for a transcript recorder downstream). Replies are made one at a time, in order; a
    node's tool runs on an event loop. An interruption cancels the reply being made (and
    its tool) and drops those waiting: they answer what the caller said before cutting in.

    Reaching an ``end`` node ends the call once its reply has been heard: after the
    :class:`~flowcat_ft.frames.BotStoppedSpeakingFrame` that follows the bot starting to
    speak it (a :class:`~flowcat_ft.services.offline.playout.BotPlayout` downstream sends
    these), or after *end_timeout_secs* without the bot speaking. An
    :class:`~flowcat_ft.frames.EndFrame` waits until the replies being made and those
    waiting have gone downstream (see
    :attr:`~flowcat_ft.services.base.AsyncService.drain_on_end`).

    Threading contract: ``node``, ``slots``, the replies waiting and the ending state are
    used on the stage thread only; a reply's coroutine gets a copy of the slots and hands
    results back with :meth:`call_soon` and :meth:`emit`.
    """

    drain_on_end = True
    trace_kind = "llm"

    def __init__(
        self, graph: ConversationGraph, *, end_timeout_secs: float = 10.0, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        self.graph = graph
        self.end_timeout_secs = end_timeout_secs
        self.node = graph.start
        self.slots: dict[str, Any] = dict(graph.slots)
        self._waiting: deque[tuple[str, str | None]] = deque()  # (template, tool)
        self._busy = False  # a reply is being made
        self._ending = False  # an end node's reply is on its way
        self._heard_end = False  # ...and the bot has started speaking it
        self._ended = False

    def on_start(self, frame: StartFrame) -> None:
        self.slots.update((k, v) for k, v in frame.metadata.items() if isinstance(k, str))
        start = self.graph.nodes[self.graph.start]
        if start.reply is not None:
            self.call_soon(self._arrive, start)  # after the StartFrame has gone on

    def process(self, frame: Frame, direction: Direction) -> None:
        kind = type(frame)
        if kind is TranscriptionFrame and direction is Direction.DOWNSTREAM:
            self._heard(frame.text)
        elif kind is BotStartedSpeakingFrame and self._ending:
            self._heard_end = True
        elif kind is BotStoppedSpeakingFrame and self._heard_end:
            self._end_call()
        self.push(frame, direction)

    def _heard(self, text: str) -> None:
        if self._ending:
            return  # the conversation is over
        edge = self.graph.match(self.node, text)
        if edge is None:
            self._reply(self.graph.fallback, None)
            return
        self._arrive(self.graph.nodes[edge.to])

    def _arrive(self, node: Node) -> None:
        self.node = node.next or node.name
        if node.end:
            self._ending = True
            self._schedule_end_check()
        if node.reply is not None:
            self._reply(node.reply, node.tool)

    def _reply(self, template: str, tool: str | None) -> None:
        self._waiting.append((template, tool))
        self._next_reply()

    def _next_reply(self) -> None:
        if self._waiting and not self._busy:
            self._busy = True
            template, tool = self._waiting.popleft()
            slots = dict(self.slots)  # the coroutine's own copy, with earlier tools' results
            self.start_work(partial(self._say, template=template, tool=tool, slots=slots))

    def _replied(self, generation: int) -> None:
        if generation == self._generation:
            self._busy = False
            self._next_reply()

    async def _say(
        self, generation: int, template: str, tool: str | None, slots: dict[str, Any]
    ) -> None:
        try:
            await self._make_reply(generation, template, tool, slots)
        finally:
            self.call_soon(self._replied, generation)

    async def _make_reply(
        self, generation: int, template: str, tool: str | None, slots: dict[str, Any]
    ) -> None:
        if tool is not None:
            result = self.graph.tools[tool](slots)
            if inspect.isawaitable(result):
                result = await result
            updates = {tool: result}
            if isinstance(result, Mapping):
                updates.update(result)
            slots.update(updates)
            self.call_soon(self._update_slots, generation, updates)
        text = template.format_map(slots)
        self.emit(generation, LLMFullResponseStartFrame())
        self.emit(generation, LLMTextFrame(text))
        self.emit(generation, LLMFullResponseEndFrame())

    def has_pending_work(self) -> bool:
        return super().has_pending_work() or bool(self._waiting)

    def _update_slots(self, generation: int, updates: dict[str, Any]) -> None:
        if generation == self._generation:
            self.slots.update(updates)

    # -- ending the call --------------------------------------------------------------------

    def _schedule_end_check(self) -> None:
        loop = self.event_loop.loop
        check = partial(self.call_soon, self._end_check)
        loop.call_soon_threadsafe(loop.call_later, self.end_timeout_secs, check)

    def _end_check(self) -> None:
        if not self._ended and not self._heard_end:
            self._end_call()  # the reply never played (no TTS or playout downstream?)

    def _end_call(self) -> None:
        if not self._ended:
            self._ended = True
            self.push(EndFrame(), Direction.UPSTREAM)

    def on_interruption(self) -> None:
        self.cancel_work()
        self._waiting.clear()
        self._busy = False

    def on_end(self) -> None:
        self._ended = True

    def on_cancel(self) -> None:
        self._ended = True
        self.on_interruption()
