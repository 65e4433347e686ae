"""Turn detection: when the user's turn starts and ends, and when the user barges in."""

from __future__ import annotations

from collections.abc import Callable

from flowcat_ft.audio.vad import VADState
from flowcat_ft.audio.vad_processor import VADAnalyzer, VADProcessor
from flowcat_ft.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Direction,
    Frame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)

__all__ = ["TurnDetector"]


class TurnDetector(VADProcessor):
    """Take turns from a voice activity analyzer on the caller's audio.

    Like :class:`~flowcat_ft.audio.vad_processor.VADProcessor` it runs the call's analyzer
    on the caller's audio, but it pushes turn events rather than raw speaking events:

    - the user's turn starts when the analyzer reports speech (SPEAKING, or STOPPING
      straight after STARTING: speech shorter than a batched analyzer's reports):
      :class:`~flowcat_ft.frames.UserStartedSpeakingFrame`;
    - it ends after *turn_timeout_secs* of silence, counted from the analyzer leaving
      SPEAKING (a pause shorter than that continues the turn):
      :class:`~flowcat_ft.frames.UserStoppedSpeakingFrame`, which here marks the end of
      the user's turn (its ``pts`` is when the speech ended, on the audio's clock);
    - while the bot speaks (from a :class:`~flowcat_ft.frames.BotStartedSpeakingFrame`
      to a :class:`~flowcat_ft.frames.BotStoppedSpeakingFrame`, travelling either way),
      speech starts a turn only once the user has spoken for *min_barge_in_secs* in all
      since the analyzer last was QUIET: then the detector interrupts the bot
      (:meth:`~flowcat_ft.processor.FrameProcessor.interrupt`) and the turn starts.
      Shorter speech, such as "mm-hm" under the bot's words, is let go. With
      ``interrupts=False`` the detector never interrupts: speech over the bot starts a
      turn at once, like any other, and a stage that hears the words decides whether it
      interrupts (:class:`~flowcat_ft.services.barge_in.BargeInGate`);
    - with *onset_secs*, the detector also reports speech sooner than a turn starts: once
      the analyzer has reported speech (STARTING or SPEAKING) for *onset_secs* since it
      was last QUIET, a :class:`~flowcat_ft.frames.VADUserStartedSpeakingFrame`, and
      once it has been QUIET for *turn_timeout_secs*, a
      :class:`~flowcat_ft.frames.VADUserStoppedSpeakingFrame` (whether a turn started in
      between or not; a gap inside a word, which a model may hear as a window or two of
      silence, does not end it). A barge-in gate pauses the bot on the first, well before
      the analyzer's ``start_secs`` confirm a turn, and resumes it on the second if no turn
      started: speech too short for a turn (a cough) pauses the bot as briefly as a
      one-word turn does.

    Durations are measured in audio (the input frames' samples), not by the clock, so the
    decisions do not depend on how the stage thread is scheduled.  The timeout is counted
    separately from the analyzer's ``stop_secs``; with this detector a short ``stop_secs``
    (0.2 s) is usual.
    """

    def __init__(
        self,
        analyzer_factory: Callable[[int], VADAnalyzer],
        *,
        turn_timeout_secs: float = 0.8,
        min_barge_in_secs: float = 0.5,
        interrupts: bool = True,
        onset_secs: float | None = None,
    ) -> None:
        super().__init__(analyzer_factory)
        if turn_timeout_secs < 0 or min_barge_in_secs < 0 or (onset_secs or 0) < 0:
            raise ValueError(
                "turn_timeout_secs, min_barge_in_secs and onset_secs must not be negative"
            )
        self.turn_timeout_secs = turn_timeout_secs
        self.min_barge_in_secs = min_barge_in_secs
        self.interrupts = interrupts
        self.onset_secs = onset_secs
        self.bot_speaking = False
        self.onset = False  # a VADUserStartedSpeakingFrame went out, its stop has not
        self._speech = 0  # samples of speech since the analyzer last was QUIET
        self._quiet = 0  # samples since the analyzer last was not QUIET
        self._silence = 0  # samples since the analyzer last was SPEAKING
        self._last_state = VADState.QUIET

    def process(self, frame: Frame, direction: Direction) -> None:
        if isinstance(frame, BotStartedSpeakingFrame):
            self.bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.bot_speaking = False
        super().process(frame, direction)

    def on_vad_state(self, state: VADState, num_samples: int) -> None:
        rate = self.analyzer.sample_rate
        if state is VADState.QUIET:
            self._speech = 0
        elif state is not VADState.STOPPING:
            self._speech += num_samples
        if self.onset_secs is not None:
            self._report_onset(state, num_samples, rate)
        # STOPPING straight after STARTING: the speech was SPEAKING between two reports (a
        # batched analyzer reports after several windows), too briefly to be seen.
        skipped = state is VADState.STOPPING and self._last_state is VADState.STARTING
        self._last_state = state
        if state is VADState.SPEAKING or skipped:
            self._silence = 0
            barging_in = self.bot_speaking and self.interrupts
            if not self.user_speaking and (
                not barging_in or self._speech >= self.min_barge_in_secs * rate
            ):
                if barging_in:
                    self.interrupt()
                self.user_speaking = True
                self.push(UserStartedSpeakingFrame())
        else:
            self._silence += num_samples
            if self.user_speaking and self._silence >= self.turn_timeout_secs * rate:
                self.user_speaking = False
                # Its pts is when the speech ended, so that response latency measured from
                # it includes the turn timeout, as the caller experiences it.
                ended = self.audio_end_ns - self._silence * 1_000_000_000 // rate
                self.push(UserStoppedSpeakingFrame(pts=ended))

    def _report_onset(self, state: VADState, num_samples: int, rate: int) -> None:
        if state is not VADState.QUIET:
            self._quiet = 0
            if not self.onset and self._speech >= self.onset_secs * rate:
                self.onset = True
                self.push(VADUserStartedSpeakingFrame())
        else:
            self._quiet += num_samples
            if self.onset and self._quiet >= self.turn_timeout_secs * rate:
                self.onset = False
                self.push(VADUserStoppedSpeakingFrame())
