"""The VAD processor: a voice activity analyzer on the caller's audio, speaking events out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from flowcat_ft.audio.vad import VADState
from flowcat_ft.frames import (
    Direction,
    Frame,
    InputAudioRawFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.processor import FrameProcessor

__all__ = ["VADAnalyzer", "VADProcessor"]


class VADAnalyzer(Protocol):
    """What :class:`VADProcessor` needs of an analyzer (the energy and Silero ones fit)."""

    sample_rate: int

    def analyze(self, pcm: np.ndarray) -> VADState: ...

    def reset(self) -> None: ...


class VADProcessor(FrameProcessor):
    """Run a voice activity analyzer on the caller's audio and report when the user speaks.

    The call's analyzer is made by ``analyzer_factory(sample_rate)`` on the first
    :class:`~flowcat_ft.frames.InputAudioRawFrame` travelling downstream, at its rate (mono
    pcm16 at a rate the analyzer takes: 16 or 8 kHz for Silero)::

        Pipeline([G711Decoder, lambda: Resampler(16000), lambda: VADProcessor(EnergyVADAnalyzer)])

    When the analyzer enters SPEAKING the processor pushes a
    :class:`~flowcat_ft.frames.UserStartedSpeakingFrame`, and when it comes back to QUIET
    (after ``stop_secs`` of silence) a :class:`~flowcat_ft.frames.UserStoppedSpeakingFrame`,
    each ahead of the audio frame that caused it (a batched Silero analyzer reports a little
    later: see :mod:`flowcat_ft.audio.silero`); ``user_speaking`` is True between the two.
    Audio and every other frame pass on.
    """

    def __init__(self, analyzer_factory: Callable[[int], VADAnalyzer]) -> None:
        super().__init__()
        self.analyzer_factory = analyzer_factory
        self.analyzer: VADAnalyzer | None = None
        self.user_speaking = False
        # When the audio analyzed so far ends, on the input frames' clock (their pts: when
        # they reached the transport), for events that say when something happened in it.
        self.audio_end_ns = 0

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM and isinstance(frame, InputAudioRawFrame):
            self._analyze(frame)
        self.push(frame, direction)

    def _analyze(self, frame: InputAudioRawFrame) -> None:
        if frame.codec != "pcm16" or frame.num_channels != 1:
            raise ValueError(f"{self.name} takes mono pcm16 audio, not {frame!r}")
        analyzer = self.analyzer
        if analyzer is None:
            analyzer = self.analyzer = self.analyzer_factory(frame.sample_rate)
        elif frame.sample_rate != analyzer.sample_rate:
            raise ValueError(
                f"{self.name}: audio at {frame.sample_rate} Hz after {analyzer.sample_rate} Hz"
            )
        self.audio_end_ns = frame.pts + frame.num_frames * 1_000_000_000 // frame.sample_rate
        self.on_vad_state(analyzer.analyze(frame.samples), frame.num_frames)

    def on_vad_state(self, state: VADState, num_samples: int) -> None:
        """Act on the analyzer's state after a frame of *num_samples* samples.

        The default pushes the speaking events; a subclass may decide otherwise.
        """
        speaking = state is VADState.SPEAKING or state is VADState.STOPPING
        if speaking != self.user_speaking:
            self.user_speaking = speaking
            self.push(UserStartedSpeakingFrame() if speaking else UserStoppedSpeakingFrame())

    def on_end(self) -> None:
        self._close()

    def on_cancel(self) -> None:
        self._close()

    def _close(self) -> None:
        # A batched Silero analyzer drops the window it left waiting for the model.
        if self.analyzer is not None:
            self.analyzer.reset()
