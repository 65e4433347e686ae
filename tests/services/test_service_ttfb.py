"""AsyncService's TTFB: each job's time to its first frame, measured separately even when
jobs overlap."""

from __future__ import annotations

import asyncio
import threading
import time

from helpers import wait_until

from flowcat_ft import Direction, LLMTextFrame, Pipeline, TextFrame
from flowcat_ft.services import AsyncService


class Gated(AsyncService):
    """Each text starts a job that emits it once its gate opens ("fast" has none)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, threading.Event] = {}
        self.started_after_ns: dict[str, int] = {}
        self.emitting_ns: dict[str, int] = {}

    def process(self, frame, direction):
        if isinstance(frame, TextFrame) and direction is Direction.DOWNSTREAM:
            text = frame.text
            gate = self.gates.setdefault(text, threading.Event())
            if text == "fast":
                gate.set()
            self.start_work(lambda generation: self.answer(generation, text, gate))
            self.started_after_ns[text] = time.perf_counter_ns()
        else:
            self.push(frame, direction)

    async def answer(self, generation: int, text: str, gate: threading.Event) -> None:
        while not gate.is_set():
            await asyncio.sleep(0.005)
        self.emitting_ns[text] = time.perf_counter_ns()
        self.emit(generation, LLMTextFrame(text))
        self.emit(generation, LLMTextFrame(text + " again"))  # not a first byte


def test_overlapping_jobs_each_count_their_own_time_to_first_byte(runtime):
    out: list = []
    call = runtime.open_call(Pipeline([Gated]), lambda f, d: out.append(f))
    service = call.processors[0]
    call.push(TextFrame("slow"))  # started first, answers last
    call.push(TextFrame("fast"))
    assert wait_until(lambda: any(getattr(f, "text", "") == "fast" for f in out))
    assert service.ttfb.count == 1
    service.gates["slow"].set()
    assert wait_until(lambda: service.ttfb.count == 2)
    # The slow job's own wait, not the time until the fast one answered.
    slow = service.emitting_ns["slow"] - service.started_after_ns["slow"]
    assert service.ttfb.max >= slow
    call.push(TextFrame("fast"))
    assert wait_until(lambda: service.ttfb.count == 3)
    call.close()
    texts = [f.text for f in out if isinstance(f, LLMTextFrame)]
    assert texts == ["fast", "fast again", "slow", "slow again", "fast", "fast again"]
