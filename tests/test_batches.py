"""The batch path: a stage hands each position the frames of every ready call at once.

Frames must come out complete, in order within each call, each to its own call; kernels
(``process_batch``) must see several calls' frames together; system frames must still
overtake queued data, and every slab must come back.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import wait_until
from processors import Tag

from flowcat_ft import (
    Direction,
    EndFrame,
    ErrorFrame,
    FrameProcessor,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    Pipeline,
    Runtime,
    TextFrame,
)
from flowcat_ft.agents.echo import Echo
from flowcat_ft.audio.g711 import ulaw_decode, ulaw_encode
from flowcat_ft.audio.processors import G711Decoder, G711Encoder
from flowcat_ft.call import Inbox
from flowcat_ft.observers import Observer
from flowcat_ft.processor import Batch, batch_kernel


class Sizes(FrameProcessor):
    """A batch-aware pass-through that records each batch: its size and its calls."""

    batches: list[tuple[int, int]] = []

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        calls = {id(batch.processor(frame)) for frame in batch.frames}
        cls.batches.append((len(batch.frames), len(calls)))
        batch.push(batch.frames)


class Numbered(FrameProcessor):
    """Batch-aware: appends each call's own running count to its text frames."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def number(self, frame):
        if type(frame) is TextFrame:
            self.seen += 1
            return TextFrame(f"{frame.text}#{self.seen}")
        return frame

    def process(self, frame, direction):
        self.push(self.number(frame), direction)

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        frames = batch.frames
        for i, (frame, proc) in enumerate(zip(frames, batch.processors(), strict=True)):
            frames[i] = batch.replace(frame, proc.number(frame))
        batch.push(frames)


class Marked(FrameProcessor):
    """Says on each text frame which way it was called: ``K`` by its kernel, ``P`` by
    ``process()`` (on purpose unlike a real processor, whose two ways agree)."""

    def process(self, frame, direction):
        if type(frame) is TextFrame:
            frame = TextFrame(frame.text + "P")
        self.push(frame, direction)

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        batch.push(
            [
                batch.replace(f, TextFrame(f.text + "K")) if type(f) is TextFrame else f
                for f in batch.frames
            ]
        )


def held_inbox() -> Inbox:
    """An inbox flushed only when the test says, so a stage sees many calls at once."""
    return Inbox(lambda: None)


def collect(outputs: dict[int, list], index: int):
    log = outputs.setdefault(index, [])
    return lambda frame, direction: log.append(frame)


@pytest.mark.parametrize("threads", [1, 2])
def test_every_frame_reaches_its_own_call_in_order(runtime, threads):
    class Seen(Sizes):
        batches = []

    pipeline = Pipeline([Seen, Tag, Numbered, FrameProcessor, Tag], threads=threads, shards=1)
    outputs: dict[int, list] = {}
    calls = [runtime.open_call(pipeline, collect(outputs, i)) for i in range(60)]
    inbox = held_inbox()
    for round_ in range(20):
        for i, call in enumerate(calls):
            assert inbox.push(call, TextFrame(f"{i}.{round_}"))
        inbox.flush()
    for call in calls:
        call.end()
    assert all(call.wait(10) for call in calls)
    for i in range(60):
        texts = [f.text for f in outputs[i] if type(f) is TextFrame]
        assert texts == [f"{i}.{r}+#{r + 1}+" for r in range(20)]
        assert type(outputs[i][-1]) is EndFrame
    # The kernel saw batches holding several calls' frames, not one frame at a time.
    assert max(size for size, _ in Seen.batches) >= 60
    assert max(calls_in for _, calls_in in Seen.batches) >= 30


def ulaw_frames(rng: np.random.Generator, count: int) -> list[bytes]:
    return [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(count)]


def round_trip(codes: bytes) -> bytes:
    """What decoding then encoding does to µ-law codes, one frame at a time."""
    pcm = np.empty(len(codes), np.int16)
    ulaw_decode(np.frombuffer(codes, np.uint8), pcm)
    out = np.empty(len(codes), np.uint8)
    ulaw_encode(pcm, out)
    return out.tobytes()


def test_g711_kernels_code_every_calls_audio_in_place(runtime):
    rng = np.random.default_rng(7)
    pipeline = Pipeline([G711Decoder, Sizes, Echo, G711Encoder], shards=1)
    outputs: dict[int, list] = {}
    sent = {i: ulaw_frames(rng, 10) for i in range(40)}
    calls = [runtime.open_call(pipeline, collect(outputs, i)) for i in range(40)]
    inbox = held_inbox()
    for r in range(10):
        for i, call in enumerate(calls):
            frame = InputAudioRawFrame.from_bytes(runtime.pool, sent[i][r], 8000, codec="mulaw")
            assert inbox.push(call, frame)
        inbox.flush()
    for call in calls:
        call.end()
    assert all(call.wait(10) for call in calls)
    for i in range(40):
        audio = [f for f in outputs[i] if isinstance(f, OutputAudioRawFrame)]
        assert [f.codec for f in audio] == ["mulaw"] * 10
        assert [f.audio for f in audio] == [round_trip(codes) for codes in sent[i]]
    for log in outputs.values():
        log.clear()
    del frame, audio  # the frames they name hold slabs
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_decoded_audio_is_what_the_per_frame_path_makes(runtime):
    """The kernel and process() agree (observers make the runtime call process())."""
    rng = np.random.default_rng(3)
    codes = ulaw_frames(rng, 5)
    results = []
    for observers in ((), (Observer(),)):
        out: list = []
        call = runtime.open_call(
            Pipeline([G711Decoder]), lambda f, d, out=out: out.append(f), observers=observers
        )
        for data in codes:
            call.push_audio(data, 8000, codec="mulaw")
        call.end()
        assert call.wait(5)
        results.append([f.audio for f in out if isinstance(f, InputAudioRawFrame)])
    assert results[0] == results[1] and len(results[0]) == 5


def burst(pool, frame) -> list:
    """Five frames of bot audio, then ``frame``, if it is text (as a TTS would say it)."""
    if type(frame) is not TextFrame:
        return [frame]
    return [OutputAudioRawFrame.from_bytes(pool, b"\x01\x00" * 160, 8000) for _ in range(5)] + [
        frame
    ]


class Burst(FrameProcessor):
    """Batch-aware: each text frame becomes five frames of bot audio, then the text."""

    def process(self, frame, direction):
        for out in burst(self.pool, frame):
            self.push(out, direction)

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        batch.push([batch.replace(f, out) for f in batch.frames for out in burst(batch.pool, f)])


class HeldKernel(FrameProcessor):
    """Batch-aware: holds its stage thread inside the first batch until ``opened``."""

    opened = threading.Event()
    entered = threading.Event()

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        cls.entered.set()
        cls.opened.wait(10)
        batch.push(batch.frames)


def test_an_interruption_overtakes_audio_queued_inside_a_stage(runtime):
    class Held(HeldKernel):
        opened = threading.Event()
        entered = threading.Event()

    out: list = []
    pipeline = Pipeline([Burst, Held, Tag], shards=1)
    call = runtime.open_call(pipeline, lambda f, d: out.append(f))
    inbox = held_inbox()
    for i in range(10):
        assert inbox.push(call, TextFrame(f"old{i}"))
    inbox.flush()
    assert Held.entered.wait(5)  # all 60 frames are in the stage, past Burst
    call.interrupt()
    Held.opened.set()
    call.push(TextFrame("new"))
    call.end()
    assert call.wait(5)
    names = [f.text if isinstance(f, TextFrame) else type(f).__name__ for f in out]
    cut = names.index("InterruptionFrame")
    assert [n for n in names if n.startswith("old")] == []  # dropped, never out
    assert names[:cut].count("OutputAudioRawFrame") == 0
    assert names[cut:].count("OutputAudioRawFrame") == 5 and "new+" in names[cut:]
    assert sum(call.dropped) == 60
    out.clear()
    assert wait_until(lambda: runtime.pool.in_use == 0)


def test_a_failing_kernel_fails_the_calls_in_its_batch_and_no_other(runtime):
    class Picky(FrameProcessor):
        def process(self, frame, direction):
            if getattr(frame, "text", "") == "boom":
                raise ValueError("boom")
            self.push(frame, direction)

        @classmethod
        def process_batch(cls, batch: Batch) -> None:
            if any(getattr(f, "text", "") == "boom" for f in batch.frames):
                raise ValueError("boom")
            batch.push(batch.frames)

    pipeline = Pipeline([Picky], shards=1)
    outputs: dict[int, list] = {}
    doomed, beside = (runtime.open_call(pipeline, collect(outputs, i)) for i in range(2))
    inbox = held_inbox()
    for i in range(10):
        inbox.push(doomed, TextFrame("boom" if i == 5 else "x"))
        inbox.push(beside, TextFrame("x"))
    inbox.flush()  # one batch of 20 frames, both calls'
    assert doomed.wait(5) and doomed.failed
    assert beside.wait(5) and beside.failed  # its frames were in the failed batch
    errors = [f for f in outputs[0] if type(f) is ErrorFrame]
    assert len(errors) == 1 and "ValueError: boom" in errors[0].error
    fine = runtime.open_call(pipeline, collect(outputs, 2))
    fine.push(TextFrame("fine"))
    fine.end()
    assert fine.wait(5) and not fine.failed
    assert [f.text for f in outputs[2] if type(f) is TextFrame] == ["fine"]


def test_a_subclass_that_overrides_process_runs_frame_by_frame():
    class Decoded(G711Decoder):
        def process(self, frame, direction):
            self.push(frame, direction)

    assert batch_kernel(FrameProcessor) is not None
    assert batch_kernel(G711Decoder) is not None
    assert batch_kernel(Tag) is None
    assert batch_kernel(Decoded) is None


def test_kernels_run_for_batches_and_process_for_a_few_frames(runtime):
    outputs: dict[int, list] = {}
    calls = [runtime.open_call(Pipeline([Marked]), collect(outputs, i)) for i in range(20)]
    inbox = held_inbox()
    for call in calls:
        inbox.push(call, TextFrame("many"))
    inbox.flush()
    assert wait_until(lambda: all(len(outputs[i]) == 2 for i in range(20)))  # start, many
    calls[0].push(TextFrame("one"))
    assert wait_until(lambda: len(outputs[0]) == 3)
    for call in calls:
        call.end()
    assert all(call.wait(5) for call in calls)
    texts = [f.text for f in outputs[0] if type(f) is TextFrame]
    assert texts == ["manyK", "oneP"]


def test_a_position_with_mixed_classes_runs_frame_by_frame(runtime):
    made = iter([Marked, Tag, Marked])
    pipeline = Pipeline([lambda: next(made)()], shards=1)
    outputs: dict[int, list] = {}
    calls = [runtime.open_call(pipeline, collect(outputs, i)) for i in range(3)]
    inbox = held_inbox()
    for _ in range(10):
        for call in calls:
            inbox.push(call, TextFrame("x"))
    inbox.flush()
    for call in calls:
        call.end()
    assert all(call.wait(5) for call in calls)
    texts = [[f.text for f in outputs[i] if type(f) is TextFrame] for i in range(3)]
    assert texts == [["xP"] * 10, ["x+"] * 10, ["xP"] * 10]


def test_the_inbox_refuses_frames_for_an_ending_call():
    with Runtime(threads=1, slabs=64) as runtime:
        call = runtime.open_call(Pipeline([FrameProcessor]), lambda f, d: None)
        inbox = held_inbox()
        call.end()
        assert not inbox.push(call, TextFrame("late"))
        assert call.wait(5)


def test_system_frames_from_a_kernel_keep_their_place(runtime):
    """A kernel may push any frame: an interruption it starts goes round like any other."""

    class Barge(FrameProcessor):
        def process(self, frame, direction):
            if getattr(frame, "text", "") == "barge":
                self.interrupt()
            self.push(frame, direction)

        @classmethod
        def process_batch(cls, batch: Batch) -> None:
            for frame in batch.frames:
                if getattr(frame, "text", "") == "barge":
                    batch.processor(frame).interrupt()
            batch.push(batch.frames)

    out: list = []
    call = runtime.open_call(Pipeline([Barge, Tag]), lambda f, d: out.append((f, d)))
    call.push(TextFrame("barge"))
    assert wait_until(lambda: any(isinstance(f, InterruptionFrame) for f, _ in out))
    call.end()
    assert call.wait(5)
    assert all(d is Direction.DOWNSTREAM for _, d in out)
