"""Both VADs on real speech (espeak-ng) between silences, under noise: each utterance is
found once, where it is.

A segment, as an analyzer reports it, runs from the frame at which the run of speech that
reached SPEAKING began (QUIET -> STARTING) to the frame at which the silence that reached
QUIET began (SPEAKING -> STOPPING).  The window that decided it ended by that frame's end,
so a boundary is placed one decision window earlier: a 20 ms frame for the energy
analyzer, a 32 ms model window for Silero.  (A batched Silero analyzer gives the same
verdicts, later: see test_silero.)

Every boundary is within 60 ms of the truth except where Silero ends an utterance: the
model's probability of speech stays above 0.7 for up to about 120 ms after an utterance's
last sound (its own hangover: the windows it judges show it, whatever the frame size), so
Silero's ends are held to -60..+140 ms.
"""

import pytest
from speech_samples import track

from flowcat_ft.audio.silero import SileroVADAnalyzer
from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADState

TEXTS = [
    "I need help with my order.",
    "Yes.",
    "Hello, I would like to book a table for two people tonight.",
]
GAPS = [1.0, 1.5, 1.5, 1.2]  # longer than stop_secs (0.8 s), so each utterance stands alone
TOLERANCE = 0.06
SILERO_END_TOLERANCE = (-0.06, 0.14)

ANALYZERS = {
    "energy": (EnergyVADAnalyzer, 0.020),
    "silero": (SileroVADAnalyzer, 0.032),
}


def reported_segments(analyzer, frames, lag: float) -> list[tuple[float, float]]:
    segments = []
    start = end = 0.0
    previous = VADState.QUIET
    for t, pcm in frames:
        state = analyzer.analyze(pcm)
        if previous is VADState.QUIET and state is not VADState.QUIET:
            start = t - lag
        if previous is VADState.SPEAKING and state is not VADState.SPEAKING:
            end = t - lag
        if state is VADState.QUIET and previous in (VADState.SPEAKING, VADState.STOPPING):
            segments.append((start, end))
        previous = state
    return segments


@pytest.mark.parametrize("rate", [16000, 8000])
@pytest.mark.parametrize("name", ANALYZERS)
def test_each_utterance_is_found_where_it_is(tmp_path_factory, name, rate):
    speech = track(tmp_path_factory, TEXTS, rate, GAPS)
    make, lag = ANALYZERS[name]
    found = reported_segments(make(rate), speech.frames(), lag)

    assert len(found) == len(speech.segments), (found, speech.segments)
    low, high = SILERO_END_TOLERANCE if name != "energy" else (-TOLERANCE, TOLERANCE)
    for (start, end), (true_start, true_end) in zip(found, speech.segments, strict=True):
        assert abs(start - true_start) <= TOLERANCE, (start, true_start)
        assert low <= end - true_end <= high, (end, true_end)
