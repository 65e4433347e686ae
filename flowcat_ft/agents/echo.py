"""The echo agent: the caller hears themselves. The simplest real pipeline, used by
``flowcat-ft serve`` until a talking agent exists and by the echo benchmark."""

from __future__ import annotations

from flowcat_ft.frames import Direction, Frame, InputAudioRawFrame, OutputAudioRawFrame
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.processor import Batch, FrameProcessor


class Echo(FrameProcessor):
    """Turns the caller's audio into output audio, moving the slab (no copy)."""

    def process(self, frame: Frame, direction: Direction) -> None:
        if type(frame) is InputAudioRawFrame:
            frame = _as_output(frame)
        self.push(frame, direction)

    @classmethod
    def process_batch(cls, batch: Batch) -> None:
        """Every call's input frames become output frames on the same slabs, in one loop.
        (Not by assigning ``__class__``: on 3.13t that stops every thread's world.)"""
        frames = batch.frames
        if batch.direction is Direction.DOWNSTREAM:
            for i, frame in enumerate(frames):
                if type(frame) is InputAudioRawFrame:
                    frames[i] = batch.replace(frame, _as_output(frame))
        batch.push(frames)


def _as_output(frame: InputAudioRawFrame) -> OutputAudioRawFrame:
    return OutputAudioRawFrame(
        frame.take_slab(),
        frame.num_frames,
        frame.sample_rate,
        frame.num_channels,
        frame.codec,
        frame.pts,
    )


def echo_pipeline(depth: int = 1) -> Pipeline:
    """An echo behind ``depth - 1`` pass-through processors (the benchmark uses 7 stages)."""
    return Pipeline([FrameProcessor] * (depth - 1) + [Echo])
