"""Call lifecycle: hooks, draining end, cancel, errors contained to their call, and every
slab back in the pool however a call ends."""

from __future__ import annotations

import contextlib
import threading

import pytest
from helpers import wait_until
from processors import Gate, Hooks, Raise, Sleepy, Tag

from flowcat_ft import (
    CallClosedError,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    FrameProcessor,
    InputAudioRawFrame,
    Pipeline,
    StartFrame,
    TextFrame,
)
from flowcat_ft.call import Inbox

AUDIO = b"\x10\x00" * 160


def push_audio(call, n: int) -> None:
    for _ in range(n):
        call.push_audio(AUDIO, 8000)


def drop_output(frame, direction) -> None:
    """An on_output that keeps nothing, as a transport that has sent the audio."""


def test_hooks_run_once_per_processor_in_order(runtime):
    class Log(Hooks):
        log = []

    call = runtime.open_call(Pipeline([Log, Tag, Log], threads=2))
    call.push(TextFrame("x"))
    call.end()
    assert call.wait(5)
    assert list(Log.events().values()) == [["start", "end"], ["start", "end"]]


def test_end_drains_everything_pushed_before_it(runtime):
    call = runtime.open_call(Pipeline([Sleepy, Tag], threads=2))
    for i in range(50):
        call.push(TextFrame(str(i)))
    call.end()
    out = list(call.frames(timeout=10))
    assert [f.text for f in out if isinstance(f, TextFrame)] == [f"{i}+" for i in range(50)]
    assert isinstance(out[-1], EndFrame) and call.done and call.end_reason == "ended"


def test_slabs_come_back_after_a_normal_end(runtime):
    call = runtime.open_call(Pipeline([Tag] * 7), drop_output)
    push_audio(call, 300)
    call.end()
    assert call.wait(5)
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_cancel_drops_queued_frames_and_returns_their_slabs(runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    class Log(Hooks):
        log = []

    call = runtime.open_call(Pipeline([Log, Blocked], threads=2), drop_output)
    push_audio(call, 40)
    assert runtime.pool.in_use > 0
    call.cancel("caller hung up")
    Blocked.opened.set()
    assert call.wait(5)
    assert call.end_reason == "caller hung up"
    assert ("cancel" in [e for _, e in Log.log]) and ("end" not in [e for _, e in Log.log])
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_slabs_come_back_after_an_interruption(runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    call = runtime.open_call(Pipeline([Tag, Blocked], threads=2), drop_output)
    push_audio(call, 40)
    call.interrupt()
    Blocked.opened.set()
    call.end()
    assert call.wait(5)
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_a_raising_processor_ends_only_its_own_call(runtime):
    pipeline = Pipeline([Tag, Raise, Tag], threads=2)
    bad = runtime.open_call(pipeline)
    good = runtime.open_call(pipeline)
    push_audio(bad, 20)
    bad.push(TextFrame("boom"))
    with contextlib.suppress(CallClosedError):  # the error may have ended the call by now
        push_audio(bad, 20)
    for i in range(100):
        good.push(TextFrame(str(i)))
    out = list(bad.frames(timeout=5))
    errors = [f for f in out if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and errors[0].fatal and "ValueError: boom" in errors[0].error
    assert errors[0].processor == "Raise"
    assert isinstance(out[-1], CancelFrame) and bad.failed
    del out, errors
    good.end()
    got = [f.text for f in good.frames(timeout=5) if isinstance(f, TextFrame)]
    assert got == [f"{i}++" for i in range(100)]
    assert wait_until(lambda: runtime.pool.in_use == 0)


@pytest.mark.parametrize("hook", ["on_end", "on_cancel"])
def test_a_raising_end_or_cancel_hook_still_ends_the_call(runtime, hook, caplog):
    def boom(self) -> None:
        raise ValueError(f"{hook} failed")

    Breaks = type("Breaks", (Tag,), {hook: boom})
    call = runtime.open_call(Pipeline([Tag, Breaks, Tag], threads=2))
    push_audio(call, 20)
    call.end() if hook == "on_end" else call.cancel("caller hung up")
    assert call.wait(10), f"a raising {hook} left the call hanging"
    out = list(call.frames(timeout=5))
    assert isinstance(out[-1], CancelFrame) and call.failed
    if hook == "on_end":  # the error's report cancels the call
        errors = [f for f in out if isinstance(f, ErrorFrame)]
        assert len(errors) == 1 and errors[0].fatal and errors[0].processor == "Breaks"
        assert call.end_reason == f"fatal error: {errors[0].error}"
        del errors
    else:  # the caller's cancel went through
        assert call.end_reason == "caller hung up"
    reports = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(reports) == 1 and f"ValueError: {hook} failed (in Breaks" in reports[0]
    del out
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_pushing_into_a_closed_call_raises(runtime):
    call = runtime.open_call(Pipeline([Tag]))
    call.end()
    with pytest.raises(CallClosedError, match="closed"):
        call.push(TextFrame("late"))
    assert call.wait(5)
    with pytest.raises(CallClosedError):
        call.push_audio(AUDIO, 8000)
    assert wait_until(lambda: runtime.pool.in_use == 0)


class WaitsForItsCall(FrameProcessor):
    """Waits for its own call to end, on the stage thread that must end it."""

    def process(self, frame, direction):
        if isinstance(frame, TextFrame):
            self.call.wait()
        self.push(frame, direction)


def test_waiting_for_a_call_from_its_processor_fails_fast(runtime):
    call = runtime.open_call(Pipeline([WaitsForItsCall]))
    call.push(TextFrame("x"))
    errors = [f for f in call.frames(timeout=5) if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "RuntimeError" in errors[0].error
    assert "use end() or cancel()" in errors[0].error
    assert call.end_reason.startswith("fatal error")


def test_closing_a_call_from_its_on_output_fails_fast(runtime):
    raised: list[Exception] = []

    def on_output(frame, direction):
        if isinstance(frame, TextFrame):
            try:
                call.close()
            except RuntimeError as error:
                raised.append(error)
                call.end()  # what the error says to do instead

    call = runtime.open_call(Pipeline([Tag]), on_output)
    call.push(TextFrame("x"))
    assert call.wait(5) and call.end_reason == "ended"
    assert len(raised) == 1 and "use end() or cancel()" in str(raised[0])


def test_lifecycle_frames_are_not_pushed_directly(runtime):
    call = runtime.open_call(Pipeline([Tag]))
    with pytest.raises(ValueError, match="end\\(\\)"):
        call.push(EndFrame())
    call.close()


def test_stopping_the_runtime_cancels_running_calls():
    from flowcat_ft import Runtime

    rt = Runtime(threads=2, slabs=64).start()
    call = rt.open_call(Pipeline([Tag, Tag]), drop_output)
    push_audio(call, 10)
    rt.stop()
    assert call.done and call.end_reason == "runtime stopping"
    assert rt.pool.in_use == 0


def test_close_ends_the_call_as_a_context_manager(runtime):
    with runtime.open_call(Pipeline([Tag]), drop_output) as call:
        push_audio(call, 5)
    assert call.done and call.end_reason == "ended"


def test_input_frame_types_survive_the_trip(runtime):
    call = runtime.open_call(Pipeline([Tag] * 3))
    call.push_audio(AUDIO, 8000)
    call.end()
    audio = [f for f in call.frames(timeout=5) if isinstance(f, InputAudioRawFrame)]
    assert len(audio) == 1 and audio[0].audio == AUDIO and audio[0].sample_rate == 8000


class Amplify(FrameProcessor):
    """Copies each audio frame into a new slab, as a DSP processor would."""

    def process(self, frame, direction):
        if isinstance(frame, InputAudioRawFrame):
            frame = InputAudioRawFrame.from_bytes(self.pool, frame.audio, frame.sample_rate)
        self.push(frame, direction)


class StartsFirst(FrameProcessor):
    """Notes any text frame that reaches it before its call's StartFrame."""

    early: list[str] = []

    def __init__(self) -> None:
        super().__init__()
        self.started = False

    def on_start(self, frame: StartFrame) -> None:
        self.started = True

    def process(self, frame, direction):
        if isinstance(frame, TextFrame) and not self.started:
            self.early.append(frame.text)
        self.push(frame, direction)


def test_a_calls_start_frame_comes_before_its_data_whenever_it_was_sent():
    """The entry's race: the stage looked for system frames (none), then a new call's
    StartFrame and data arrived, then the stage took the call's data from its ready list."""
    from flowcat_ft import Runtime

    StartsFirst.early = []
    blocked, release = threading.Event(), threading.Event()

    def block() -> None:  # runs on the stage thread between its two looks
        blocked.set()
        release.wait(5)

    pipeline = Pipeline([StartsFirst])
    with Runtime(threads=1) as rt:  # both calls on one stage thread
        first = rt.open_call(pipeline, lambda f, d: None)
        assert wait_until(lambda: first.processors[0].started)
        first.processors[0].call_soon(block)
        assert blocked.wait(5)
        second = rt.open_call(pipeline, lambda f, d: None)
        second.push(TextFrame("early?"))
        release.set()
        for call in (first, second):
            call.end()
            assert call.wait(5)
    assert StartsFirst.early == []


def test_an_empty_pool_drops_frames_but_keeps_the_call():
    from flowcat_ft import Runtime

    rt = Runtime(threads=1, slabs=8).start()
    try:
        kept: list = []
        call = rt.open_call(Pipeline([Amplify]), lambda f, d: kept.append(f))
        inbox = Inbox(lambda: None)  # the stage gets all 7 at once
        for _ in range(7):
            inbox.push(call, InputAudioRawFrame.from_bytes(rt.pool, AUDIO, 8000))
        inbox.flush()  # 7 of 8 slabs held by the input...
        assert wait_until(lambda: rt.pool.drops > 0)  # ...so copies soon find none free
        assert not call.done and rt.metrics()["slabs"]["drops"] == rt.pool.drops
        kept.clear()  # the slabs come back as the frames holding them go
        assert wait_until(lambda: rt.pool.in_use < rt.pool.capacity)
        call.push_audio(AUDIO, 8000)
        call.end()
        assert call.wait(5) and call.end_reason == "ended"
    finally:
        rt.stop()
