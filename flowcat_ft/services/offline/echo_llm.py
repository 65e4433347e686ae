"""An LLM for tests: it answers each final transcript with what it heard."""

from __future__ import annotations

from flowcat_ft.frames import (
    Direction,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
)
from flowcat_ft.processor import FrameProcessor

__all__ = ["EchoLLM"]


class EchoLLM(FrameProcessor):
    """Reply to each final :class:`~flowcat_ft.frames.TranscriptionFrame` with
    ``prefix`` and its text, as one LLM response; the transcript goes on after it."""

    def __init__(self, prefix: str = "You said: ", *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.prefix = prefix

    def process(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is TranscriptionFrame and direction is Direction.DOWNSTREAM:
            self.push(LLMFullResponseStartFrame())
            self.push(LLMTextFrame(f"{self.prefix}{frame.text}"))
            self.push(LLMFullResponseEndFrame())
        self.push(frame, direction)
