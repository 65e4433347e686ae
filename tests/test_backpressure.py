"""Back-pressure and fairness: full rings push back on the producer, memory per call is
bounded, and a flooding call cannot starve the others."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import wait_until
from processors import Gate, Sleepy, Tag

from flowcat_ft import CallClosedError, EndFrame, Pipeline, Runtime, TextFrame

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


def fill(call) -> None:
    """Push until the call's input ring is full."""
    pushed = 0
    while call.try_push(TextFrame(str(pushed))):
        pushed += 1
        assert pushed < 100, "the input ring never filled"


def test_a_push_waiting_for_room_sleeps_until_the_stage_takes_input(small_runtime, monkeypatch):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    call = small_runtime.open_call(Pipeline([Blocked]))
    call.push(TextFrame("held"))
    assert Blocked.entered.wait(5)
    fill(call)
    sleeping: set[int] = set()
    sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: sleeping.add(threading.get_ident()) or sleep(s))
    pusher = threading.Thread(target=call.push, args=(TextFrame("last"),))
    pusher.start()
    assert wait_until(lambda: call._room_waiter is not None)  # it waits for room...
    Blocked.opened.set()
    pusher.join(5)  # ...until the stage takes frames from the ring
    assert not pusher.is_alive() and pusher.ident not in sleeping  # parked, not polling
    call.end()
    texts = [f.text for f in call.frames(timeout=5) if isinstance(f, TextFrame)]
    assert texts[0] == "held" and texts[-1] == "last"


def test_a_push_waiting_for_room_fails_when_the_call_is_cancelled(small_runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    call = small_runtime.open_call(Pipeline([Blocked]), lambda f, d: None)
    call.push(TextFrame("held"))
    assert Blocked.entered.wait(5)
    fill(call)
    raised: list[Exception] = []

    def push() -> None:
        try:
            call.push(TextFrame("late"))  # no timeout: only the cancel can end this wait
        except CallClosedError as error:
            raised.append(error)

    pusher = threading.Thread(target=push)
    pusher.start()
    assert wait_until(lambda: call._room_waiter is not None)
    call.cancel("hung up")  # the stage is still held: the cancel itself wakes the pusher
    pusher.join(5)
    assert not pusher.is_alive() and len(raised) == 1
    Blocked.opened.set()
    assert call.wait(5) and call.end_reason == "hung up"


def test_memory_per_call_is_bounded_when_a_stage_stalls(small_runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    call = small_runtime.open_call(Pipeline([Tag, Blocked], threads=2), lambda f, d: None)
    with pytest.raises(TimeoutError):
        for _ in range(1000):
            call.push_audio(AUDIO, 8000, timeout=0.2)
    rt = small_runtime
    stage = rt._runners_now()[0].shard.stages[0]
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
