"""flowcat-ft: a runtime for real-time voice AI agents on free-threaded CPython 3.13t.

A call's frames flow through a :class:`Pipeline` of :class:`FrameProcessor` objects. Each stage
of the pipeline runs on a dedicated OS thread shared by every call; stages are linked by
lock-free single-producer single-consumer rings, and audio travels in preallocated slabs.
"""

from flowcat_ft.call import Call, CallClosedError
from flowcat_ft.frames import (
    AudioRawFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    ControlFrame,
    DataFrame,
    Direction,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    OutputDTMFFrame,
    StartFrame,
    SystemFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.pipeline import ParallelPipeline, Pipeline
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.runtime import Runtime
from flowcat_ft.slabs import PoolExhaustedError, Slab, SlabPool, SlabReleasedError

__all__ = [
    "AudioRawFrame",
    "BotStartedSpeakingFrame",
    "BotStoppedSpeakingFrame",
    "Call",
    "CallClosedError",
    "CancelFrame",
    "ControlFrame",
    "DataFrame",
    "Direction",
    "EndFrame",
    "ErrorFrame",
    "Frame",
    "FrameProcessor",
    "InputAudioRawFrame",
    "InputDTMFFrame",
    "InterimTranscriptionFrame",
    "InterruptionFrame",
    "LLMFullResponseEndFrame",
    "LLMFullResponseStartFrame",
    "LLMTextFrame",
    "MetricsFrame",
    "OutputAudioRawFrame",
    "OutputDTMFFrame",
    "ParallelPipeline",
    "Pipeline",
    "PoolExhaustedError",
    "Runtime",
    "Slab",
    "SlabPool",
    "SlabReleasedError",
    "StartFrame",
    "SystemFrame",
    "TTSAudioRawFrame",
    "TTSStartedFrame",
    "TTSStoppedFrame",
    "TTSTextFrame",
    "TextFrame",
    "TranscriptionFrame",
    "UserStartedSpeakingFrame",
    "UserStoppedSpeakingFrame",
]
