"""The echo agent: the caller hears themselves. The simplest real pipeline, used by
``flowcat-ft serve`` until a talking agent exists and by the echo benchmark."""

from __future__ import annotations

from flowcat_ft.frames import Direction, Frame, InputAudioRawFrame, OutputAudioRawFrame
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.processor import FrameProcessor


class Echo(FrameProcessor):
    """Turns the caller's audio into output audio, moving the slab (no copy)."""

    def process(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is InputAudioRawFrame:
            frame = OutputAudioRawFrame(
                frame.take_slab(),
                frame.num_frames,
                frame.sample_rate,
                frame.num_channels,
                frame.codec,
                frame.pts,
            )
        self.push(frame, direction)


def echo_pipeline(depth: int = 1) -> Pipeline:
    """An echo behind ``depth - 1`` pass-through processors (the benchmark uses 7 stages)."""
    return Pipeline([FrameProcessor] * (depth - 1) + [Echo])
