"""Embedding: plain threads with no asyncio (callback or blocking iterator), and the
asyncio adapter whose output crosses to the loop in batches."""

from __future__ import annotations

import asyncio
import threading

import pytest
from processors import Gate, Raise, Tag

from flowcat_ft import CallClosedError, EndFrame, ErrorFrame, Pipeline, Runtime, TextFrame
from flowcat_ft.aio import AsyncCall
from flowcat_ft.loops import LoopBridge


def test_a_reader_thread_iterates_while_another_thread_pushes(runtime):
    call = runtime.open_call(Pipeline([Tag] * 3))
    got: list[str] = []

    def read() -> None:
        got.extend(f.text for f in call.frames(timeout=10) if isinstance(f, TextFrame))

    reader = threading.Thread(target=read)
    reader.start()

    def write() -> None:
        for i in range(500):
            call.push(TextFrame(str(i)))
        call.end()

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(10)
    reader.join(10)
    assert got == [f"{i}+++" for i in range(500)]


def test_iterating_a_callback_call_is_an_error(runtime):
    call = runtime.open_call(Pipeline([Tag]), lambda f, d: None)
    with pytest.raises(RuntimeError, match="on_output"):
        call.frames()
    call.close()


def test_the_iterator_times_out_when_nothing_comes(runtime):
    call = runtime.open_call(Pipeline([Tag]))
    frames = call.frames(timeout=0.05)
    next(frames)  # the StartFrame
    with pytest.raises(TimeoutError):
        next(frames)
    call.close()


def test_errors_reach_the_embedder(runtime):
    call = runtime.open_call(Pipeline([Raise]))
    call.push(TextFrame("boom"))
    errors = [f for f in call.frames(timeout=5) if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and call.end_reason.startswith("fatal error")


def test_a_blocking_processor_factory_stalls_no_stage_thread():
    """Factories are user code: while one blocks in open_call, calls end and flow."""
    entered, release = threading.Event(), threading.Event()

    def slow_factory() -> Tag:
        entered.set()
        release.wait(10)
        return Tag()

    with Runtime(threads=1) as rt:  # one shard: both calls on one stage thread
        pipeline = Pipeline([Tag])
        ending, going_on = rt.open_call(pipeline), rt.open_call(pipeline)
        opener = threading.Thread(target=rt.open_call, args=(Pipeline([slow_factory]),))
        opener.start()
        try:
            assert entered.wait(5)
            ending.end()
            assert ending.wait(5)
            going_on.push(TextFrame("x"))
            going_on.end()
            out = [f.text for f in going_on.frames(timeout=5) if isinstance(f, TextFrame)]
            assert out == ["x+"]
            assert rt.calls == []
        finally:
            release.set()
            opener.join(5)


def test_asyncio_adapter_delivers_on_the_loop_in_batches(runtime):
    async def main() -> tuple[list[str], int, bool]:
        loop = asyncio.get_running_loop()
        bridge = LoopBridge(loop)
        call = AsyncCall(runtime, Pipeline([Tag] * 7), bridge)
        for i in range(300):
            await call.push(TextFrame(str(i)))
        call.end()
        texts = [f.text async for f in call.frames() if isinstance(f, TextFrame)]
        await asyncio.wait_for(call.wait(), 5)
        return texts, bridge.wakeups, call.call.done

    texts, wakeups, done = asyncio.run(main())
    assert texts == [f"{i}+++++++" for i in range(300)]
    assert done
    assert wakeups < 300  # far fewer loop wake-ups than frames


def test_asyncio_callbacks_run_on_the_loop_thread(runtime):
    async def main() -> set[int]:
        loop_thread = threading.get_ident()
        threads: set[int] = set()
        ended = asyncio.Event()

        def on_output(frame, direction) -> None:
            threads.add(threading.get_ident() == loop_thread)
            if isinstance(frame, EndFrame):
                ended.set()

        call = AsyncCall(
            runtime, Pipeline([Tag, Tag]), LoopBridge(asyncio.get_running_loop()), on_output
        )
        assert call.push_nowait(TextFrame("x"))
        call.end()
        await asyncio.wait_for(ended.wait(), 5)
        return threads

    assert asyncio.run(main()) == {True}


class TimerCountingLoop(asyncio.SelectorEventLoop):
    """Counts the timers scheduled on it (``asyncio.sleep`` with a delay makes one)."""

    timers = 0

    def call_at(self, when, callback, *args, context=None):
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


async def push_waiting_for_room(call: AsyncCall, text: str) -> asyncio.Task:
    """Start pushing ``text`` into ``call``, whose input ring is full, and return once the
    push waits for room."""
    pusher = asyncio.create_task(call.push(TextFrame(text)))
    for _ in range(100):
        await asyncio.sleep(0)
        if call.call._room_waiter is not None:
            return pusher
    raise AssertionError("the push never waited for room")


def test_asyncio_push_waits_for_the_stage_to_take_input_not_for_a_timer():
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    async def main(rt: Runtime) -> list[str]:
        loop = asyncio.get_running_loop()
        call = AsyncCall(rt, Pipeline([Blocked]), LoopBridge(loop))
        assert call.push_nowait(TextFrame("held"))
        assert Blocked.entered.wait(5)
        while call.push_nowait(TextFrame("fill")):
            pass
        timers = loop.timers
        first = await push_waiting_for_room(call, "first")
        second = asyncio.create_task(call.push(TextFrame("second")))  # waits its turn
        for _ in range(10):
            await asyncio.sleep(0)
        assert loop.timers == timers  # nothing polls while the pushes wait
        Blocked.opened.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        call.end()
        return [f.text async for f in call.frames() if isinstance(f, TextFrame)]

    with Runtime(threads=1, input_capacity=8) as rt:
        texts = asyncio.run(main(rt), loop_factory=TimerCountingLoop)
    assert texts[0] == "held" and texts[-2:] == ["first", "second"]


def test_asyncio_push_waiting_for_room_fails_when_the_call_is_cancelled():
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    async def main(rt: Runtime) -> None:
        call = AsyncCall(rt, Pipeline([Blocked]), LoopBridge(asyncio.get_running_loop()))
        assert call.push_nowait(TextFrame("held"))
        assert Blocked.entered.wait(5)
        while call.push_nowait(TextFrame("fill")):
            pass
        abandoned = await push_waiting_for_room(call, "abandoned")
        abandoned.cancel()  # a push given up on stops waiting
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert call.call._room_waiter is None
        with pytest.raises(TimeoutError, match="input ring full"):
            await call.push(TextFrame("timed out"), timeout=0.01)
        pusher = await push_waiting_for_room(call, "late")
        call.cancel("hung up")  # the stage is still held: the cancel itself wakes the push
        with pytest.raises(CallClosedError):
            await asyncio.wait_for(pusher, 5)
        Blocked.opened.set()
        await asyncio.wait_for(call.wait(), 5)
        assert call.call.end_reason == "hung up"

    with Runtime(threads=1, input_capacity=8) as rt:
        asyncio.run(main(rt))
