"""Back-pressure and fairness: full rings push back on the producer, memory per call is
bounded, and a flooding call cannot starve the others."""

from __future__ import annotations

import threading

import pytest
from processors import Gate, Sleepy, Tag

from flowcat_ft import EndFrame, Pipeline, Runtime, TextFrame

AUDIO = b"\x10\x00" * 160


@pytest.fixture
def small_runtime():
    rt = Runtime(threads=2, slabs=256, input_capacity=8, link_capacity=16).start()
    yield rt
    rt.stop()


def test_a_full_input_ring_pushes_back(small_runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    call = small_runtime.open_call(Pipeline([Blocked]), lambda f, d: None)
    call.push(TextFrame("held"))
    assert Blocked.entered.wait(5)
    pushed = 0
    while call.try_push(TextFrame(str(pushed))):
        pushed += 1
        assert pushed < 100, "the input ring never filled"
    with pytest.raises(TimeoutError, match="input ring full"):
        call.push(TextFrame("more"), timeout=0.05)
    Blocked.opened.set()
    call.push(TextFrame("after"), timeout=5)  # room again once the stage moves
    call.end()
    assert call.wait(5)


def test_memory_per_call_is_bounded_when_a_stage_stalls(small_runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    call = small_runtime.open_call(Pipeline([Tag, Blocked], threads=2), lambda f, d: None)
    with pytest.raises(TimeoutError):
        for _ in range(1000):
            call.push_audio(AUDIO, 8000, timeout=0.2)
    rt = small_runtime
    stage = rt._runners_now()[0].stages[0]
    # The call's input ring, the link ring, what the blocked stage popped before blocking
    # (at most a ring's worth) and what one entry turn may leave pending.
    bound = rt.input_capacity + 2 * rt.link_capacity + stage.quantum
    assert call.frames_in <= bound
    assert rt.pool.in_use <= bound
    Blocked.opened.set()
    call.end()
    assert call.wait(5)


def test_a_flooding_call_does_not_starve_others(small_runtime):
    class Slow(Sleepy):
        delay = 0.0002

    pipeline = Pipeline([Slow, Tag], threads=2)
    flood_out: list = []
    flood = small_runtime.open_call(pipeline, lambda f, d: flood_out.append(f))
    quiet_done = threading.Event()
    flood_seen_when_quiet_done: list[int] = []

    def on_quiet(frame, direction):
        if isinstance(frame, EndFrame):
            flood_seen_when_quiet_done.append(len(flood_out))
            quiet_done.set()

    def flood_it() -> None:
        for i in range(1000):
            flood.push(TextFrame(str(i)))
        flood.end()

    feeder = threading.Thread(target=flood_it)
    feeder.start()
    while flood.frames_in < 30:  # the flood is under way and its input ring is full
        threading.Event().wait(0.001)
    quiet = small_runtime.open_call(pipeline, on_quiet)
    for i in range(10):
        quiet.push(TextFrame(str(i)))
    quiet.end()
    assert quiet_done.wait(10)
    feeder.join(30)
    assert flood.wait(30)
    # Round-robin at the entry: the quiet call finished long before the flood did.
    assert flood_seen_when_quiet_done[0] < 300
