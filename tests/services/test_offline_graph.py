"""The conversation graph: YAML loading, matching what the caller said to an edge, reply
templates filled from the call's slots and tool results, the end of the call, clear errors
(file, line, field) for mistakes in the file; and the echo LLM."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from helpers import wait_until

from flowcat_ft import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    EndFrame,
    ErrorFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    Pipeline,
    StartFrame,
    TranscriptionFrame,
)
from flowcat_ft.services.offline import DEFAULT_GRAPH, EchoLLM, GraphError, GraphLLM, load_graph
from flowcat_ft.services.offline.graph import ConversationGraph

GRAPH = textwrap.dedent(
    """\
    start: welcome
    fallback: "Sorry {caller}, say that again?"
    slots:
      caller: friend
      city: Paris
    nodes:
      welcome:
        reply: "Hi {caller}!"
      weather:
        reply: "Sunny in {city}."
        edges:
          - to: tomorrow
            phrases: [and tomorrow]
      tomorrow:
        reply: "Rain tomorrow."
        next: welcome
      time:
        tool: clock
        reply: "It is {clock}."
      forecast:
        tool: forecast
        reply: "{forecast} in {city}."
      bye:
        reply: "Bye!"
        end: true
    edges:
      - to: weather
        phrases: [what is the weather, weather please]
        keywords: [weather, sunny]
      - to: time
        phrases: [what time is it]
        keywords: [time]
      - to: forecast
        phrases: [forecast for london]
      - to: bye
        phrases: [goodbye, bye]
    """
)


async def forecast(slots):
    await asyncio.sleep(0.01)
    return {"city": "London", "forecast": "Fog"}


TOOLS = {"clock": lambda slots: "noon", "forecast": forecast}


def graph() -> ConversationGraph:
    return ConversationGraph.from_yaml(GRAPH, "agent.yaml", TOOLS)


# -- loading and matching ------------------------------------------------------------------


def test_the_default_agent_loads_and_listens_for_its_phrases():
    agent = load_graph(DEFAULT_GRAPH)
    assert agent.start == "welcome" and agent.nodes["goodbye"].end
    assert {"what time is it", "please tell me the weather", "goodbye"} <= set(agent.phrases)
    assert agent.match("welcome", "What time is it?").to == "time"
    assert agent.match("weather", "and tomorrow").to == "tomorrow"
    assert agent.match("welcome", "and tomorrow") is None  # only just after the weather


def test_matching_prefers_a_whole_phrase_then_the_longest_contained_then_keywords():
    g = graph()
    assert g.match("welcome", "weather please").to == "weather"
    assert g.match("welcome", "tell me what time is it now").to == "time"
    assert g.match("welcome", "is it sunny").to == "weather"  # a keyword
    assert g.match("welcome", "the time and the weather").to == "weather"  # a tie: first
    assert g.match("welcome", "bye the way, what time is it").to == "time"  # longer phrase
    assert g.match("welcome", "I like cheese") is None
    assert g.match("weather", "and tomorrow").to == "tomorrow"  # the node's own edges


def test_edges_marked_interrupts_say_what_cuts_the_bot_off():
    agent = load_graph(DEFAULT_GRAPH)
    assert set(agent.interrupt_phrases) == {"goodbye", "bye", "bye bye", "that is all", "stop"}
    assert agent.match("welcome", "stop").to == "stop" and agent.nodes["stop"].reply is None
    assert graph().interrupt_phrases == []  # none marked
    text = GRAPH.replace("phrases: [goodbye, bye]", "phrases: [goodbye, bye]\n    interrupts: true")
    assert ConversationGraph.from_yaml(text, "agent.yaml", TOOLS).interrupt_phrases == [
        "goodbye",
        "bye",
    ]


def test_yes_and_no_stay_words():
    text = GRAPH.replace("phrases: [goodbye, bye]", "phrases: [no, yes, on]")
    g = ConversationGraph.from_yaml(text, "agent.yaml", TOOLS)
    assert g.match("welcome", "yes").to == "bye"


# -- the processor -------------------------------------------------------------------------


def run(runtime, said, metadata=None, **options):
    out = []
    call = runtime.open_call(
        Pipeline([lambda: GraphLLM(graph(), **options)]),
        lambda f, d: out.append((f, d)),
        start_frame=StartFrame(metadata=metadata or {}),
    )
    for text in said:
        call.push(TranscriptionFrame(text))
    return call, out


def replies(out):
    return [f.text for f, _ in out if type(f) is LLMTextFrame]


def test_replies_follow_the_graph_with_slots_from_the_call_and_tools(runtime):
    said = ["what is the weather", "and tomorrow", "hmm", "what time is it", "forecast for london"]
    call, out = run(runtime, said, metadata={"caller": "Ada"})
    assert wait_until(lambda: len(replies(out)) == 6)
    assert replies(out) == [
        "Hi Ada!",
        "Sunny in Paris.",
        "Rain tomorrow.",
        "Sorry Ada, say that again?",
        "It is noon.",
        "Fog in London.",  # an async tool, whose dict result updates the slots
    ]
    kinds = [type(f) for f, _ in out if type(f) is not TranscriptionFrame]
    assert kinds[1:4] == [LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame]
    assert [f.text for f, _ in out if type(f) is TranscriptionFrame] == said  # passed on
    processor = call.processors[0]
    assert processor.slots["city"] == "London" and processor.node == "forecast"
    call.close()


def test_the_end_node_ends_the_call_once_its_reply_has_been_heard(runtime):
    call, out = run(runtime, ["goodbye"])
    assert wait_until(lambda: "Bye!" in replies(out))
    call.push(BotStoppedSpeakingFrame())  # the end of an earlier reply: not yet
    # Through the processor: had it asked for the end, the call would take no more input.
    assert wait_until(lambda: any(type(f) is BotStoppedSpeakingFrame for f, _ in out))
    assert not call.done
    call.push(BotStartedSpeakingFrame())  # (CallClosedError if the end had been asked)
    call.push(BotStoppedSpeakingFrame())
    assert call.wait(5) and call.end_reason == "ended"
    assert any(type(f) is EndFrame and d is Direction.DOWNSTREAM for f, d in out)


def test_the_end_node_ends_the_call_even_if_the_reply_is_never_played(runtime):
    call, _ = run(runtime, ["bye"], end_timeout_secs=0.2)
    assert call.wait(5) and call.end_reason == "ended"


def test_a_failing_tool_reports_an_error_and_the_call_goes_on(runtime):
    def broken(slots):
        raise OSError("clock unplugged")

    out = []
    g = ConversationGraph.from_yaml(GRAPH, "agent.yaml", {**TOOLS, "clock": broken})
    call = runtime.open_call(Pipeline([lambda: GraphLLM(g)]), lambda f, d: out.append((f, d)))
    call.push(TranscriptionFrame("what time is it"))
    assert wait_until(lambda: any(type(f) is ErrorFrame for f, _ in out))
    error = next(f for f, _ in out if type(f) is ErrorFrame)
    assert "clock unplugged" in error.error and not error.fatal
    call.push(TranscriptionFrame("what is the weather"))
    assert wait_until(lambda: "Sunny in Paris." in replies(out))
    call.close()


def test_the_echo_llm_says_what_it_heard(runtime):
    out = []
    call = runtime.open_call(Pipeline([EchoLLM]), lambda f, d: out.append((f, d)))
    call.push(TranscriptionFrame("hello there"))
    assert wait_until(lambda: replies(out) == ["You said: hello there"])
    call.close()


# -- errors --------------------------------------------------------------------------------


def error_for(text: str, tools=TOOLS) -> GraphError:
    with pytest.raises(GraphError) as caught:
        ConversationGraph.from_yaml(textwrap.dedent(text), "agent.yaml", tools)
    return caught.value


MISTAKES = [
    # (what to change, into what, the field named, the problem, the line it is on)
    ("  city: Paris", "  city: [Paris]", "slots.city", "expected text", "[Paris]"),
    ("    next: welcome", "    nxt: welcome", "nodes.tomorrow.nxt", "unknown field", "nxt:"),
    ("    next: welcome", "    next: nope", "nodes.tomorrow.next", "no node named 'nope'", "nope"),
    ("  - to: bye\n", "  - to: byee\n", "edges[3].to", "no node named 'byee'", "byee"),
    ("    tool: clock", "    tool: sundial", "nodes.time.tool", "no tool named", "sundial"),
    ("{clock}.", "{clok}.", "nodes.time.reply", "unknown slot {clok}", "{clok}"),
    ('"Bye!"', '"Bye {caller!r}"', "nodes.bye.reply", "written {name}", "Bye {"),
    ('"Bye!"', '"Bye {"', "nodes.bye.reply", "bad template", "Bye {"),
    ("    end: true", "    end: maybe", "nodes.bye.end", "true or false", "maybe"),
    (
        "[goodbye, bye]",
        "[goodbye, bye]\n    interrupts: 1",
        "edges[3].interrupts",
        "true or",
        ": 1",
    ),
    ("[time]", "[the time]", "edges[1].keywords[0]", "not one word", "the time"),
    ("[goodbye, bye]", "[goodbye, '?!']", "edges[3].phrases[1]", "no words", "?!"),
    ("  - to: weather\n    phrases", "  - phrases", "edges[0].to", "is missing", "- phrases"),
    ('{clock}."', '{clock}."\n    reply: again', "nodes.time.reply", "twice", "reply: again"),
]


@pytest.mark.parametrize(("old", "new", "field", "problem", "on_line"), MISTAKES)
def test_mistakes_are_reported_with_file_line_and_field(old, new, field, problem, on_line):
    assert old in GRAPH
    text = GRAPH.replace(old, new, 1)
    error = error_for(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if on_line in t)
    assert (error.field, error.line) == (field, line), str(error)
    assert problem in error.problem
    assert str(error).startswith(f"agent.yaml:{line}: {field}: ")


def test_yaml_syntax_errors_name_the_line():
    error = error_for("start: welcome\nnodes:\n  welcome: {reply: [unclosed\n")
    assert error.field == "YAML" and error.line == 4 and "agent.yaml:4: YAML: " in str(error)
    error = error_for("start: welcome\n  nodes: x\n")
    assert error.line == 2


def test_a_graph_needs_a_start_and_nodes():
    assert error_for("").problem == "the file is empty"
    error = error_for("nodes:\n  a: {reply: hi}\n")
    assert (error.field, error.line) == ("graph.start", 1)
    error = error_for("start: b\nnodes:\n  a: {reply: hi}\n")
    assert (error.field, error.line, error.problem) == ("start", 1, "no node named 'b'")
    assert error_for("start: a\nnodes: [a]\n").problem.startswith("expected a mapping")


def test_load_graph_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("start: a\nnodes:\n  a:\n    reply: hi\n    sayz: hello\n")
    with pytest.raises(GraphError, match=r"broken\.yaml:5: nodes\.a\.sayz: unknown field"):
        load_graph(path)
