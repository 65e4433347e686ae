"""Both VADs on real speech (espeak-ng) between silences, under noise: each utterance is
found once, where it is, within 60 ms.

A segment, as an analyzer reports it, runs from the window at which the run of speech that
reached SPEAKING began (QUIET -> STARTING) to the window at which the silence that reached
QUIET began (the last SPEAKING -> STOPPING): a boundary is placed at the start of the
window that moved the state, a 20 ms frame for the energy analyzer, a 32 ms model window
for Silero.  (A batched Silero analyzer gives the same verdicts, later: see test_silero.)

Each boundary must be within 60 ms of the speech's boundary.  Where a quiet sound at the
edge of an utterance may or may not count as speech (see speech_samples: the "s" of "Yes."
at 8 kHz), the speech's boundary lies anywhere from the loud speech's edge to the audible
speech's edge.  The noise runs from almost none (-81 dBFS, where the volume's climb from
the background once held starts back) to -49 dBFS (where the energy analyzer, which needs
10 dB over the noise, still hears all of the loud speech), white and pink (whose levels
swing several dB from window to window).
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
NOISES = {  # RMS of the noise
    "white-81dB": ("white", 3.0),
    "white-64dB": ("white", 20.0),
    "white-55dB": ("white", 60.0),
    "white-49dB": ("white", 120.0),
    "pink-55dB": ("pink", 60.0),
    "pink-49dB": ("pink", 120.0),
}

ANALYZERS = {  # how to make one, and the samples of its decision window at 16 kHz
    "energy": (EnergyVADAnalyzer, 320),
    "silero": (SileroVADAnalyzer, 512),
}


def reported_segments(analyzer, frames, window: int) -> list[tuple[float, float]]:
    """The analyzer's segments, in seconds; it decides once every *window* samples."""
    rate = analyzer.sample_rate
    segments = []
    start = end = 0.0
    previous = VADState.QUIET
    for t, pcm in frames:
        state = analyzer.analyze(pcm)
        # Where the window judged last began: the frame ended at t, the window at or before.
        began = (round(t * rate) // window - 1) * window / rate
        if previous is VADState.QUIET and state is not VADState.QUIET:
            start = began
        if previous is VADState.SPEAKING and state is not VADState.SPEAKING:
            end = began
        if state is VADState.QUIET and previous in (VADState.SPEAKING, VADState.STOPPING):
            segments.append((start, end))
        previous = state
    return segments


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("rate", [16000, 8000])
@pytest.mark.parametrize("name", ANALYZERS)
def test_each_utterance_is_found_where_it_is(tmp_path_factory, name, rate, noise):
    kind, rms = NOISES[noise]
    speech = track(tmp_path_factory, TEXTS, rate, GAPS, noise_rms=rms, noise=kind)
    make, window = ANALYZERS[name]
    found = reported_segments(make(rate), speech.frames(), window * rate // 16000)

    assert len(found) == len(speech.segments), (found, speech.segments)
    for (start, end), (loud_start, loud_end), (heard_start, heard_end) in zip(
        found, speech.segments, speech.audible, strict=True
    ):
        bounds = (start, end), (loud_start, loud_end), (heard_start, heard_end)
        assert min(heard_start, loud_start) - TOLERANCE <= start <= loud_start + TOLERANCE, bounds
        assert loud_end - TOLERANCE <= end <= max(heard_end, loud_end) + TOLERANCE, bounds


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("rate", [16000, 8000])
def test_silero_hears_speech_that_opens_the_stream(tmp_path_factory, rate, text):
    speech = track(tmp_path_factory, [text], rate, [0.0, 1.0])
    found = reported_segments(SileroVADAnalyzer(rate), speech.frames(), 512 * rate // 16000)

    # Found, though less sharply than after a silence: the model's first windows lag (it
    # starts from nothing: up to 64 ms), and until the analyzer has heard the background
    # its noise floor is the speech's own lowest level, which may end speech (up to 80 ms)
    # early.  (The energy analyzer, whose confidence is the height over that floor, hears
    # such speech from its first pause on.)
    assert len(found) == 1, found
    ((start, end),) = found
    ((loud_start, loud_end),) = speech.segments
    ((_, heard_end),) = speech.audible
    assert loud_start <= start <= loud_start + 0.1
    assert loud_end - 0.1 <= end <= max(heard_end, loud_end) + TOLERANCE
