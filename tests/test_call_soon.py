"""Work done on other threads comes back to a processor's stage thread with call_soon,
as a service's network I/O on an event loop does."""

from __future__ import annotations

import asyncio
import threading

from helpers import wait_until

from flowcat_ft import Direction, FrameProcessor, Pipeline, TextFrame


class Lookup(FrameProcessor):
    """Answers each text after an asynchronous 'network' round trip on an event loop."""

    def process(self, frame, direction):
        if isinstance(frame, TextFrame) and direction is Direction.DOWNSTREAM:
            self.event_loop.submit(self.fetch(frame.text))
        else:
            self.push(frame, direction)

    async def fetch(self, text: str) -> None:
        await asyncio.sleep(0.01)
        self.call_soon(self.answer, text.upper(), threading.get_ident())

    def answer(self, text: str, loop_thread: int) -> None:
        assert threading.get_ident() != loop_thread  # back on the stage thread
        self.push(TextFrame(text))


class Broken(FrameProcessor):
    def process(self, frame, direction):
        if isinstance(frame, TextFrame):
            self.call_soon(self.fail)
        self.push(frame, direction)

    def fail(self) -> None:
        raise RuntimeError("late failure")


def test_results_from_an_event_loop_are_pushed_on_the_stage_thread(runtime):
    out: list = []
    call = runtime.open_call(Pipeline([Lookup]), lambda f, d: out.append(f))
    for word in ("one", "two"):
        call.push(TextFrame(word))
    assert wait_until(lambda: len([f for f in out if isinstance(f, TextFrame)]) == 2)
    assert sorted(f.text for f in out if isinstance(f, TextFrame)) == ["ONE", "TWO"]
    call.close()


def test_a_failing_callback_fails_its_call_only(runtime):
    bad = runtime.open_call(Pipeline([Broken]))
    good = runtime.open_call(Pipeline([Lookup]), lambda f, d: None)
    bad.push(TextFrame("x"))
    assert bad.wait(5) and bad.end_reason.startswith("fatal error")
    assert not good.done
    good.close()


def test_a_processor_keeps_one_event_loop(runtime):
    call = runtime.open_call(Pipeline([Lookup]), lambda f, d: None)
    proc = call.processors[0]
    assert {id(proc.event_loop) for _ in range(5)} == {id(proc.event_loop)}
    call.close()
