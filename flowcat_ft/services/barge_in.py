"""Barge-in decided on what the caller said, and never at the cost of their words.

A caller who speaks over the bot may mean to cut it off ("stop", "what time is it?") or
may not ("thanks", "mm-hm"). Judging by how long they spoke is a coin toss near the
threshold, and what falls under it is lost. Here every utterance is transcribed, and
:class:`BargeInGate`, placed after the speech-to-text stage, decides on the words: an
utterance over the bot interrupts it once what was heard of it has *min_words* words or
holds one of the *phrases* that always interrupt ("stop" and "goodbye" among them); one
that does not is held back, whole, and handed on as the caller's next turn when the bot
has finished. The turn detector ahead must start a turn on any speech without
interrupting (:class:`~flowcat_ft.audio.turns.TurnDetector` with ``interrupts=False``).

This is pipecat's minimum-words interruption strategy, with the words that did not
interrupt kept rather than dropped. The decision is taken as early as the STT allows: on
each :class:`~flowcat_ft.frames.InterimTranscriptionFrame` (what was heard so far), else on
the final :class:`~flowcat_ft.frames.TranscriptionFrame`.

Words come a while after speech starts (a turn some 200 ms in, once the VAD has
confirmed it; a word once most of it has been heard), so with *pause_on_speech* the gate
pauses the bot as soon as the caller starts speaking over it (LiveKit Agents' "false
interruption" handling): on the VAD's first report of speech
(:class:`~flowcat_ft.frames.VADUserStartedSpeakingFrame`, from a
:class:`~flowcat_ft.audio.turns.TurnDetector` with ``onset_secs``), or else on the turn's
start, a :class:`~flowcat_ft.frames.PauseOutputFrame` stops the output at once (the
carrier is told to drop what it holds). Then either the words interrupt, which drops the
paused reply, or the output plays on from where the caller stopped hearing it (a
:class:`~flowcat_ft.frames.ResumeOutputFrame`): when the speech turns out too short to
start a turn, when the caller's turn ends without the words, or after *pause_timeout_secs*
paused with no decision (speech that never ends, a transcript that never comes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from flowcat_ft.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    PauseOutputFrame,
    ResumeOutputFrame,
    SystemFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.services.base import call_later

__all__ = [
    "ALWAYS_INTERRUPT",
    "DEFAULT_PAUSE_AFTER_SECS",
    "DEFAULT_PAUSE_TIMEOUT_SECS",
    "BargeInGate",
]

ALWAYS_INTERRUPT = ("stop", "goodbye")
"""Phrases that interrupt the bot however short the utterance."""

DEFAULT_PAUSE_AFTER_SECS = 0.06
"""Seconds of speech the VAD hears over the bot before it pauses (the turn detector's
``onset_secs``): two of Silero's windows, well under the 0.2 s that confirm a turn."""

DEFAULT_PAUSE_TIMEOUT_SECS = 3.0
"""Seconds the output stays paused at most without a decision: longer than a short word
and the turn's timeout after it (which resume it sooner), short enough that a line noise
heard as endless speech silences the bot only briefly."""

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BargeInGate(FrameProcessor):
    """Let the caller interrupt the bot on what they said (see the module docstring).

    While the bot speaks (between a :class:`~flowcat_ft.frames.BotStartedSpeakingFrame`
    and a :class:`~flowcat_ft.frames.BotStoppedSpeakingFrame`, which a playout stage
    downstream sends upstream), a :class:`~flowcat_ft.frames.UserStartedSpeakingFrame`
    opens a held turn: it and the frames that follow it downstream wait here (all but
    the caller's audio, which a speech-to-text stage may pass on). Each
    transcript of the turn is judged: the words heard so far (the final transcripts, then
    the latest interim one) interrupt when they number *min_words* or more, or contain one
    of *phrases* (or of :data:`ALWAYS_INTERRUPT`). Then the gate interrupts the bot
    (:meth:`~flowcat_ft.processor.FrameProcessor.interrupt`) and, once the interruption has
    passed through it, lets the held frames go on: the turn reaches the LLM after the
    interruption, never before it (which would cancel the answer to it). If the bot stops
    first, the held turn goes on then, as the next turn. Frames travelling upstream, and
    system frames, pass at once. At the end of the call a held turn goes on, ahead of the
    :class:`~flowcat_ft.frames.EndFrame`.

    With *pause_on_speech*, each :class:`~flowcat_ft.frames.VADUserStartedSpeakingFrame`
    and :class:`~flowcat_ft.frames.UserStartedSpeakingFrame` over the bot also pauses its
    output (a :class:`~flowcat_ft.frames.PauseOutputFrame` downstream, once), and it
    resumes (a :class:`~flowcat_ft.frames.ResumeOutputFrame`) on the held turn's
    :class:`~flowcat_ft.frames.UserStoppedSpeakingFrame` if its words have not interrupted
    by then (the turn's final transcript, which follows, may still interrupt), on a
    :class:`~flowcat_ft.frames.VADUserStoppedSpeakingFrame` when no turn started, once
    paused for *pause_timeout_secs* (None: no limit) without a decision, if the bot stops
    first, and ahead of the end of the call.

    ``interruptions`` counts the barge-ins acted on, ``deferred`` the turns held until the
    bot had finished, ``pauses`` the pauses, ``pause_timeouts`` those that timed out.

    Threading contract: everything here runs on the processor's stage thread.
    """

    def __init__(
        self,
        *,
        min_words: int = 2,
        phrases: Iterable[str] = (),
        pause_on_speech: bool = False,
        pause_timeout_secs: float | None = DEFAULT_PAUSE_TIMEOUT_SECS,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if min_words < 1:
            raise ValueError(f"min_words must be at least 1, not {min_words}")
        if pause_timeout_secs is not None and pause_timeout_secs <= 0:
            raise ValueError(f"pause_timeout_secs must be positive, not {pause_timeout_secs}")
        self.min_words = min_words
        self.pause_on_speech = pause_on_speech
        self.pause_timeout_secs = pause_timeout_secs
        self.phrases = tuple(
            dict.fromkeys(" ".join(_words(p)) for p in (*ALWAYS_INTERRUPT, *phrases) if _words(p))
        )
        self.interruptions = 0
        self.deferred = 0
        self.pauses = 0
        self.pause_timeouts = 0
        self.bot_speaking = False
        self._paused = False  # the output is paused: a resume or interruption is due
        self._cancel_timeout: Callable[[], None] | None = None  # the pause's time limit
        self._held: list[Frame] | None = None  # the turn held while the bot speaks
        self._finals: list[str] = []  # its final transcripts so far
        self._interrupting = False  # it interrupted: waiting for the interruption

    def process(self, frame: Frame, direction: Direction) -> None:
        kind = type(frame)
        if kind is BotStartedSpeakingFrame:
            self.bot_speaking = True
        elif kind is BotStoppedSpeakingFrame:
            self.bot_speaking = False
            self._resume_output()
            if self._held is not None and not self._interrupting:
                self.deferred += 1
                self._release()
        elif kind is VADUserStartedSpeakingFrame:
            self._pause_output()
        elif kind is VADUserStoppedSpeakingFrame and self._held is None:
            self._resume_output()  # too short to start a turn
        if direction is Direction.UPSTREAM or isinstance(frame, SystemFrame | InputAudioRawFrame):
            self.push(frame, direction)
        elif self._held is not None:
            self._held.append(frame)
            if kind is UserStartedSpeakingFrame:
                self._pause_output()
            elif kind is UserStoppedSpeakingFrame:
                self._resume_output()
            elif isinstance(frame, TranscriptionFrame) and not self._interrupting:
                self._judge(frame)
        elif kind is UserStartedSpeakingFrame and self.bot_speaking:
            self._held = [frame]
            self._finals = []
            self._pause_output()
        else:
            self.push(frame, direction)

    def interrupts(self, text: str) -> bool:
        """Whether *text*, heard over the bot, interrupts it."""
        heard = _words(text)
        if len(heard) >= self.min_words:
            return True
        padded = f" {' '.join(heard)} "
        return any(f" {phrase} " in padded for phrase in self.phrases)

    def _judge(self, transcript: TranscriptionFrame) -> None:
        if isinstance(transcript, InterimTranscriptionFrame):
            heard = [*self._finals, transcript.text]
        else:
            self._finals.append(transcript.text)
            heard = self._finals
        if self.interrupts(" ".join(heard)):
            self._interrupting = True
            self.interruptions += 1
            self.interrupt()

    def _pause_output(self) -> None:
        if self.pause_on_speech and self.bot_speaking and not (self._paused or self._interrupting):
            self._paused = True
            self.pauses += 1
            self.push(PauseOutputFrame())
            if self.pause_timeout_secs is not None:
                self._cancel_timeout = call_later(
                    self, self.pause_timeout_secs, self._pause_timed_out
                )

    def _pause_timed_out(self) -> None:
        self._cancel_timeout = None
        if self._paused and not self._interrupting:
            self.pause_timeouts += 1
            self._resume_output()

    def _resume_output(self) -> None:
        if self._paused and not self._interrupting:  # not ahead of the interruption
            self._paused = False
            self._stop_timeout()
            self.push(ResumeOutputFrame())

    def _stop_timeout(self) -> None:
        cancel, self._cancel_timeout = self._cancel_timeout, None
        if cancel is not None:
            cancel()

    def on_interruption(self) -> None:
        self.bot_speaking = False
        self._paused = False  # the interruption drops the paused output
        self._stop_timeout()
        if self._held is not None:
            # After the interruption has gone on from here (it does once this returns).
            self._interrupting = True
            self.call_soon(self._release)

    def on_end(self) -> None:
        self._resume_output()
        self._release()

    def on_cancel(self) -> None:
        self._stop_timeout()
        self._held = None

    def _release(self) -> None:
        held, self._held = self._held, None
        self._interrupting = False
        for frame in held or ():
            self.push(frame)
