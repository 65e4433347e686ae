"""Processors used by the tests."""

from __future__ import annotations

import threading
import time

from flowcat_ft import Direction, Frame, FrameProcessor, StartFrame, TextFrame
from flowcat_ft.agents.echo import Echo as AudioEcho
from flowcat_ft.frames import InputAudioRawFrame, UserStoppedSpeakingFrame


class Tag(FrameProcessor):
    """Appends its tag to text frames, so a test can see every processor ran."""

    tag = "+"

    def process(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, TextFrame) and direction is Direction.DOWNSTREAM:
            frame = TextFrame(frame.text + self.tag)
        self.push(frame, direction)


class Counter(FrameProcessor):
    """Per-call state: numbers text frames as they pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def process(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, TextFrame):
            self.seen += 1
            frame = TextFrame(f"{frame.text}#{self.seen}")
        self.push(frame, direction)


class Hooks(FrameProcessor):
    """Records the lifecycle hooks it sees as ``(processor id, event)`` in a list that each
    test sets on a subclass of its own."""

    log: list[tuple[int, str]] = []

    def on_start(self, frame: StartFrame) -> None:
        self.log.append((id(self), "start"))

    def on_end(self) -> None:
        self.log.append((id(self), "end"))

    def on_cancel(self) -> None:
        self.log.append((id(self), "cancel"))

    def on_interruption(self) -> None:
        self.log.append((id(self), "interruption"))

    @classmethod
    def events(cls) -> dict[int, list[str]]:
        """Each processor's events, in order."""
        per_processor: dict[int, list[str]] = {}
        for proc, event in cls.log:
            per_processor.setdefault(proc, []).append(event)
        return per_processor


class Raise(FrameProcessor):
    """Raises on a text frame that says "boom"."""

    def process(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, TextFrame) and frame.text.startswith("boom"):
            raise ValueError("boom")
        self.push(frame, direction)


class Gate(FrameProcessor):
    """Blocks its stage thread on each frame until ``opened`` is set, so queues build up;
    ``entered`` is set once a frame is held. Each test sets both on a subclass of its own."""

    opened = threading.Event()
    entered = threading.Event()

    def process(self, frame: Frame, direction: Direction) -> None:
        self.entered.set()
        self.opened.wait(10)
        self.push(frame, direction)


class Sleepy(FrameProcessor):
    """Spends ``delay`` seconds per frame: a slow stage."""

    delay = 0.001

    def process(self, frame: Frame, direction: Direction) -> None:
        time.sleep(self.delay)
        self.push(frame, direction)


class Echo(FrameProcessor):
    """Answers text upstream, as a processor reporting back to the input would."""

    def process(self, frame, direction):
        if isinstance(frame, TextFrame) and direction is Direction.DOWNSTREAM:
            self.push(TextFrame("re:" + frame.text), Direction.UPSTREAM)
        self.push(frame, direction)


class TurnEveryFiveFrames(AudioEcho):
    """Says the user stopped speaking before every fifth frame of audio it echoes."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def process(self, frame, direction):
        if type(frame) is InputAudioRawFrame:
            if self.count % 5 == 0:
                self.push(UserStoppedSpeakingFrame(), direction)
            self.count += 1
        super().process(frame, direction)
