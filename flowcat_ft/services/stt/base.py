"""The STT service: the caller's audio in, interim and final transcripts out.

An STT service listens for the whole call: an interruption (the caller barging in on the
bot) does not cancel what it is doing, since that is when it matters most. Audio frames go
on downstream after the service has taken its copy, unless ``audio_passthrough`` is off:
then the frame (and its slab) ends here, which spares every later stage and the transport's
event loop a frame 50 times a second per call when nothing after the service uses the
caller's audio. Transcripts are pushed as they come:
:class:`~flowcat_ft.frames.InterimTranscriptionFrame` (may still change) and
:class:`~flowcat_ft.frames.TranscriptionFrame` (final). Where the provider detects the end
of an utterance, an :class:`~flowcat_ft.services.llm.frames.UtteranceEndFrame` follows the
final transcript that ends it.

``ttfb`` here is the time from the end of the user's speech (a
:class:`~flowcat_ft.frames.UserStoppedSpeakingFrame` passing the service) to the next
final transcript: how long the rest of the pipeline waits on speech recognition.

In a traced call, each utterance is a span (``stt``): from the user starting to speak to
the first final transcript after they stopped (or their next turn), with the transcripts
and that ``metrics.ttfb``.
"""

from __future__ import annotations

import os
import ssl
import time
from datetime import UTC, datetime

from flowcat_ft.frames import (
    Direction,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.services.llm.frames import UtteranceEndFrame
from flowcat_ft.services.net.service import CloudService
from flowcat_ft.telemetry.tracing import JobSpan

__all__ = ["STTService", "now_iso"]


def now_iso() -> str:
    """The time now, as the ``timestamp`` of a transcription frame."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class STTService(CloudService):
    """Base of the STT services; subclasses implement :meth:`send_audio` (on the stage
    thread: hand the bytes to the loop, never block) and push transcripts with
    :meth:`transcript` (from any thread). *audio_passthrough* (as in pipecat): the caller's
    audio goes on downstream; off, it ends here (see the module docstring).

    Threading contract: ``_utterance`` and ``_heard`` (the span of the utterance being
    transcribed, and its final transcripts) are used on the stage thread only.
    """

    cost = 0.5
    trace_kind = "stt"

    def __init__(
        self,
        *,
        user_id: str = "",
        audio_passthrough: bool = True,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(name=name, ssl_context=ssl_context, ca_file=ca_file)
        self.user_id = user_id
        self.audio_passthrough = audio_passthrough
        self.sample_rate = 16000
        self._stopped_ns: int | None = None
        self._utterance: JobSpan | None = None
        self._heard: list[str] = []

    def on_start(self, frame: StartFrame) -> None:
        self.sample_rate = frame.audio_in_sample_rate

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            if isinstance(frame, InputAudioRawFrame):
                self.send_audio(frame)
                if not self.audio_passthrough:
                    frame.release()
                    return
            elif isinstance(frame, UserStartedSpeakingFrame):
                self._end_utterance()
                self._utterance = self.job_span()
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._stopped_ns = time.perf_counter_ns()
                self.user_stopped()
        self.push(frame, direction)

    def send_audio(self, frame: InputAudioRawFrame) -> None:
        """Send the caller's audio to the provider."""
        raise NotImplementedError

    def user_stopped(self) -> None:
        """The user stopped speaking (a hint: finalize now, where the protocol can)."""

    def transcript(self, text: str, final: bool, language: str | None = None) -> None:
        """Push a transcript (from any thread)."""
        kind = TranscriptionFrame if final else InterimTranscriptionFrame
        frame = kind(text, self.user_id, now_iso(), language)
        self.call_soon(self._push_transcript, frame)

    def utterance_end(self) -> None:
        """Push an :class:`UtteranceEndFrame` after the transcripts pushed so far: the
        provider heard the user's utterance end (from any thread)."""
        self.call_soon(self._push_utterance_end)

    def _push_transcript(self, frame: TranscriptionFrame) -> None:
        if type(frame) is TranscriptionFrame:
            self.usage["transcripts"] += 1
            self._heard.append(frame.text)
            if self._stopped_ns is not None:
                ttfb = time.perf_counter_ns() - self._stopped_ns
                self.ttfb.add(ttfb)
                self._stopped_ns = None
                if self._utterance is not None:
                    self._utterance.annotate({"metrics.ttfb": ttfb / 1e9})
                    self._end_utterance()
        self.push(frame)

    def _end_utterance(self) -> None:
        span, self._utterance = self._utterance, None
        heard, self._heard = self._heard, []
        if span is not None:
            if heard:
                span.annotate({"transcript": " ".join(heard)})
            span.end()

    def _push_utterance_end(self) -> None:
        self.usage["utterances"] += 1
        self.push(UtteranceEndFrame())

    def on_interruption(self) -> None:
        """Keep listening: the caller's barge-in is what this service is for."""

    def on_end(self) -> None:
        super().on_end()
        self._end_utterance()

    def on_cancel(self) -> None:
        super().on_cancel()
        self._end_utterance()
