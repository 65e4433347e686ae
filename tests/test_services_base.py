"""AsyncService: coroutines on an event loop emit frames on the stage thread; an
interruption cancels the work in flight and drops what it still produces."""

from __future__ import annotations

import asyncio

from helpers import wait_until

from flowcat_ft import (
    Direction,
    ErrorFrame,
    InterruptionFrame,
    LLMTextFrame,
    Pipeline,
    TextFrame,
)
from flowcat_ft.services import AsyncService


class SlowWords(AsyncService):
    """Streams the words of each text back, one every 20 ms, like an LLM streaming tokens."""

    def process(self, frame, direction):
        if isinstance(frame, TextFrame) and direction is Direction.DOWNSTREAM:
            words = frame.text.split()
            self.start_work(lambda generation: self.stream(generation, words))
        else:
            self.push(frame, direction)

    async def stream(self, generation: int, words: list[str]) -> None:
        for word in words:
            if word == "fail":
                raise ConnectionError("provider went away")
            await asyncio.sleep(0.02)
            self.emit(generation, LLMTextFrame(word))


def texts(frames) -> list[str]:
    return [f.text for f in frames if isinstance(f, LLMTextFrame)]


def test_streamed_results_arrive_in_order_with_ttfb_measured(runtime):
    out: list = []
    call = runtime.open_call(Pipeline([SlowWords]), lambda f, d: out.append(f))
    call.push(TextFrame("one two three"))
    assert wait_until(lambda: len(texts(out)) == 3)
    assert texts(out) == ["one", "two", "three"]
    service = call.processors[0]
    assert service.ttfb.count == 1 and service.ttfb.max >= 15_000_000
    call.close()


def test_an_interruption_cancels_work_in_flight(runtime):
    out: list = []
    call = runtime.open_call(Pipeline([SlowWords]), lambda f, d: out.append(f))
    call.push(TextFrame(" ".join(f"w{i}" for i in range(50))))
    assert wait_until(lambda: len(texts(out)) >= 3)
    call.interrupt()
    assert wait_until(lambda: any(isinstance(f, InterruptionFrame) for f in out))
    cut = len(texts(out))
    call.push(TextFrame("after"))
    assert wait_until(lambda: "after" in texts(out))
    late = texts(out)[cut:]
    assert late == ["after"], late  # nothing from the cancelled stream came after the cut
    call.close()


def test_a_failing_request_reports_an_error_and_the_call_goes_on(runtime):
    out: list = []
    call = runtime.open_call(Pipeline([SlowWords]), lambda f, d: out.append(f))
    call.push(TextFrame("ok fail"))
    assert wait_until(lambda: any(isinstance(f, ErrorFrame) for f in out))
    error = next(f for f in out if isinstance(f, ErrorFrame))
    assert "ConnectionError: provider went away" in error.error and not error.fatal
    call.push(TextFrame("still here"))
    assert wait_until(lambda: "here" in texts(out))
    call.close()
    assert call.end_reason == "ended"
