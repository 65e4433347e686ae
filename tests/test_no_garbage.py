"""Ended calls leave nothing for the garbage collector.

A server runs for weeks with automatic collection off (:mod:`flowcat_ft.gcpolicy`), so a
call must leave no reference cycle behind: when its holder lets go of it, the call, its
processors, the frames they buffer and its unread output go by reference counting, and
their slabs come back at once. Here 1,000 calls end every way a call ends, on a runtime
whose policy never collects, and then one collection (saving what it finds) finds no
cycle through any of the project's objects.
"""

from __future__ import annotations

import gc

import pytest
from helpers import cycles_of_ours, never_collecting_policy, reference_cycles, wait_until
from processors import Raise, Tag

from flowcat_ft import FrameProcessor, Pipeline, Runtime, TextFrame
from flowcat_ft.agents.echo import Echo
from flowcat_ft.aio import AsyncCall
from flowcat_ft.frames import InputAudioRawFrame
from flowcat_ft.loops import LoopBridge

AUDIO = b"\x01\x00" * 160  # 10 ms of 16 kHz PCM
WAVE = 50  # calls open at once


class Keeper(FrameProcessor):
    """Keeps the call's first two audio frames (their slabs with them) until the call is
    gone, as a buffering processor (a jitter buffer, a recorder) does."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[InputAudioRawFrame] = []

    def process(self, frame, direction):
        if type(frame) is InputAudioRawFrame and len(self.kept) < 2:
            self.kept.append(frame)
            return
        self.push(frame, direction)


PIPELINE = Pipeline([Keeper, Raise, Tag, Echo], threads=2)


def feed(call, n: int = 6) -> None:
    for i in range(n):
        call.push_audio(AUDIO, 16000)
        call.push(TextFrame(str(i)))


def run_call(runtime: Runtime, kind: int):
    """One call, ended the ``kind``-th way; returns it once it has ended."""
    call = runtime.open_call(PIPELINE)
    feed(call)
    if kind == 0:  # ends, its output left unread
        call.end()
    elif kind == 1:  # ends, its output read
        call.end()
        assert list(call.frames(10))
    elif kind == 2:  # interrupted, then ends
        call.interrupt()
        feed(call, 2)
        call.end()
    elif kind == 3:  # a processor raises: the call fails
        call.push(TextFrame("boom"))
    else:  # cancelled
        call.cancel("caller hung up")
    return call


async def run_async_calls(runtime: Runtime, bridge: LoopBridge, count: int) -> int:
    """``count`` calls through AsyncCall, half read to the end, half cancelled unread."""
    for n in range(count):
        call = AsyncCall(runtime, PIPELINE, bridge)
        for i in range(4):
            await call.push(TextFrame(str(i)))
        if n % 2:
            call.end()
            assert [frame async for frame in call.frames()]
        else:
            call.cancel()
        await call.wait()
    return count


@pytest.fixture
def never_collecting():
    """A runtime whose policy never collects: whatever garbage calls make stays."""
    runtime = Runtime(threads=2, slabs=4096, gc_policy=never_collecting_policy()).start()
    try:
        yield runtime
    finally:
        runtime.stop()


def test_a_thousand_ended_calls_leave_no_garbage_and_every_slab_back(never_collecting):
    runtime = never_collecting
    collections = runtime.gc.snapshot()["process_pause"]["count"]
    for wave in range(0, 900, WAVE):
        calls = [run_call(runtime, (wave + i) % 5) for i in range(WAVE)]
        for call in calls:
            assert call.wait(10)
        assert {call.end_reason for call in calls} >= {"ended", "caller hung up"}
        del calls, call
    io = runtime.event_loop()
    assert io.submit(run_async_calls(runtime, io.bridge, 100)).result(60) == 100

    # Every slab is back, with no collection: reference counting freed everything.
    assert wait_until(lambda: runtime.pool.in_use == 0, 10), runtime.pool.in_use
    assert runtime.metrics()["calls"] == {"active": 0, "ended": 1000, "per_call": []}
    assert runtime.gc.snapshot()["process_pause"]["count"] == collections
    assert not gc.isenabled()

    assert cycles_of_ours() == []


def test_an_ended_call_held_by_its_embedder_still_works(never_collecting):
    call = run_call(never_collecting, 0)
    assert call.wait(10)
    keeper = call.processors[0]
    assert len(keeper.kept) == 2 and keeper.call.id == call.id
    keeper.push(TextFrame("late"))  # dropped: the call has ended
    texts = [f.text for f in call.frames(1) if isinstance(f, TextFrame)]
    assert texts == [f"{i}+" for i in range(6)]
    del call, keeper
    assert wait_until(lambda: never_collecting.pool.in_use == 0)


def test_reference_cycles_finds_cycles_and_only_cycles():
    ring: list = []
    ring.append([ring])
    itself: dict = {}
    itself["me"] = itself
    chain = [[1], [2]]
    found = reference_cycles([ring, ring[0], itself, chain, *chain])
    assert sorted(len(cycle) for cycle in found) == [1, 2]


def test_a_frame_an_idle_loop_made_and_another_thread_freed_gives_its_slab_back(
    never_collecting,
):
    # On 3.13t an object is freed by the thread that made it, when that thread next runs:
    # the runtime wakes its idle event-loop threads for that.
    io, made = never_collecting.event_loop(), []

    def make() -> None:
        made.append(InputAudioRawFrame.from_bytes(never_collecting.pool, AUDIO, 16000))

    io.loop.call_soon_threadsafe(make)
    assert wait_until(lambda: made)
    made.pop()  # the last reference goes on this thread; the loop has nothing to do
    assert wait_until(lambda: never_collecting.pool.in_use == 0, 10)
    assert not gc.isenabled()
