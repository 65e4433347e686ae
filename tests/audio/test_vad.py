"""The VAD state machine on given window verdicts, and EnergyVADAnalyzer on synthetic
silence, noise and voiced bursts."""

import math

import numpy as np
import pytest

from flowcat_ft.audio.vad import EnergyVADAnalyzer, VADParams, VADState, VADStateMachine

NOISE_RMS = 30.0  # about -61 dBFS


def noise(rate: int, seconds: float, rms: float = NOISE_RMS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, rms, round(rate * seconds))


def voiced(rate: int, seconds: float, peak: float = 8000.0) -> np.ndarray:
    """A 150 Hz sawtooth (all harmonics), its amplitude swinging at a syllable rate of 4 Hz."""
    t = np.arange(round(rate * seconds)) / rate
    sawtooth = 2 * ((150 * t) % 1.0) - 1
    return peak * sawtooth * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t))


def run(analyzer: EnergyVADAnalyzer, signal: np.ndarray, frame_ms: int = 20):
    """Analyze signal frame by frame; return the end time (s) and the state of each frame."""
    pcm = np.clip(np.rint(signal), -32768, 32767).astype(np.int16)
    n = analyzer.sample_rate * frame_ms // 1000
    return [
        ((start + n) / analyzer.sample_rate, analyzer.analyze(pcm[start : start + n]))
        for start in range(0, len(pcm), n)
    ]


def first(states, state: VADState, after: float = 0.0) -> float:
    return next(t for t, s in states if s is state and t > after)


def test_params_have_pipecats_defaults():
    assert VADParams() == VADParams(confidence=0.7, start_secs=0.2, stop_secs=0.8, min_volume=0.6)


def test_the_state_machine_needs_start_secs_of_speech_and_stop_secs_of_silence():
    machine = VADStateMachine(16000, VADParams(start_secs=0.1, stop_secs=0.06, min_volume=0.0))
    verdicts = [1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0]  # 20 ms windows: speech or not
    states = [machine.update(float(v), -20.0 if v else -60.0, 320).name for v in verdicts]
    expected = (
        "STARTING STARTING QUIET "  # a blip of 40 ms
        "STARTING STARTING STARTING STARTING SPEAKING "  # 100 ms of speech
        "STOPPING SPEAKING "  # a 20 ms pause
        "STOPPING STOPPING QUIET QUIET"  # 60 ms of silence
    )
    assert states == expected.split()


def test_the_state_machine_ignores_confident_windows_too_quiet_to_be_speech():
    machine = VADStateMachine(16000, VADParams(start_secs=0.0))
    assert machine.update(1.0, -80.0, 320) is VADState.QUIET  # volume 0.3 < min_volume 0.6
    for _ in range(10):
        machine.update(1.0, -20.0, 320)  # the volume rises to 0.9
    assert machine.state is VADState.SPEAKING and machine.volume > 0.6


def test_the_volume_rises_at_once_and_falls_over_a_tenth_of_a_second():
    machine = VADStateMachine(16000, VADParams())
    machine.update(0.0, -90.0, 320)
    assert machine.volume == pytest.approx(0.2)
    machine.update(0.0, -20.0, 320)
    assert machine.volume == pytest.approx(0.9)
    machine.update(0.0, -90.0, 1600)  # 0.1 s: falls 1 - 1/e of the way back
    assert machine.volume == pytest.approx(0.2 + 0.7 / math.e)


def test_once_speaking_a_window_near_the_noise_floor_is_not_speech_however_confident():
    machine = VADStateMachine(16000, VADParams(start_secs=0.0, stop_secs=0.1, min_volume=0.0))
    machine.update(0.0, -60.0, 320)  # the background
    assert machine.update(1.0, -20.0, 320) is VADState.SPEAKING
    assert machine.noise_floor_db == -60.0
    # Confident windows of background (a model's verdict trailing the audio) end speech ...
    assert machine.update(1.0, -59.0, 320) is VADState.STOPPING
    assert machine.update(1.0, -55.0, 320) is VADState.STOPPING
    # ... and 6 dB over the floor is speech again.
    assert machine.update(1.0, -54.0, 320) is VADState.SPEAKING


def test_speech_heard_before_any_background_starts_speech():
    # The floor is then the speech's own level: it does not hold the start back.
    machine = VADStateMachine(16000, VADParams(start_secs=0.04, min_volume=0.0))
    assert machine.update(1.0, -20.0, 320) is VADState.STARTING
    assert machine.update(1.0, -21.0, 320) is VADState.SPEAKING


def test_silence_is_quiet():
    states = run(EnergyVADAnalyzer(16000), np.zeros(16000))
    assert {s for _, s in states} == {VADState.QUIET}


@pytest.mark.parametrize("rms", [NOISE_RMS, 2000.0])
def test_steady_noise_is_quiet(rms):
    # 2000 is about -24 dBFS, far above min_volume: only the noise floor keeps it quiet.
    states = run(EnergyVADAnalyzer(16000), noise(16000, 3.0, rms))
    assert {s for _, s in states} == {VADState.QUIET}


def test_a_louder_noise_becomes_the_new_floor():
    signal = np.concatenate([noise(16000, 1.0, 100.0), noise(16000, 4.0, 1000.0, seed=1)])
    states = run(EnergyVADAnalyzer(16000), signal)
    # Taken for speech at first, the louder noise is adopted within 2 s, then stop_secs pass.
    assert all(s is VADState.QUIET for t, s in states if t > 1.0 + 2.0 + 0.8 + 0.06)


@pytest.mark.parametrize(("rate", "frame_ms"), [(16000, 20), (8000, 20), (16000, 10)])
def test_a_voiced_burst_is_speech_with_start_and_stop_delays(rate, frame_ms):
    params = VADParams()
    signal = noise(rate, 3.0)
    signal[rate : 2 * rate] += voiced(rate, 1.0)
    states = run(EnergyVADAnalyzer(rate, params), signal, frame_ms)

    assert all(s is VADState.QUIET for t, s in states if t <= 1.0)
    speaking = first(states, VADState.SPEAKING)
    assert speaking - 1.0 <= params.start_secs + 0.06
    quiet = first(states, VADState.QUIET, after=speaking)
    assert quiet >= 2.0
    assert quiet - 2.0 <= params.stop_secs + 0.06
    assert all(s is VADState.QUIET for t, s in states if t >= quiet)


def test_a_blip_shorter_than_start_secs_is_not_speech():
    signal = noise(16000, 2.0)
    signal[16000:17600] += voiced(16000, 0.1)
    states = {s for _, s in run(EnergyVADAnalyzer(16000), signal)}
    assert states == {VADState.QUIET, VADState.STARTING}


def test_a_pause_shorter_than_stop_secs_does_not_end_speech():
    signal = noise(16000, 4.0)
    signal[8000:24000] += voiced(16000, 1.0)
    signal[28800:40000] += voiced(16000, 0.7)  # after a 0.3 s pause
    states = run(EnergyVADAnalyzer(16000), signal)
    speaking = first(states, VADState.SPEAKING)
    assert 1.5 < first(states, VADState.STOPPING) < 1.6
    assert 1.8 < first(states, VADState.SPEAKING, after=1.6) < 1.9
    assert first(states, VADState.QUIET, after=speaking) > 2.5


def test_confidence_and_volume_follow_the_level():
    analyzer = EnergyVADAnalyzer(16000)
    run(analyzer, noise(16000, 1.0))
    assert analyzer.confidence < 0.3
    assert analyzer.volume < 0.55
    assert -63.0 < analyzer.noise_floor_db < -60.0
    run(analyzer, voiced(16000, 0.2))
    assert analyzer.confidence == 1.0
    assert analyzer.volume > 0.7


def test_reset_forgets_the_stream():
    analyzer = EnergyVADAnalyzer(16000)
    run(analyzer, noise(16000, 0.5))
    run(analyzer, voiced(16000, 0.5))
    assert analyzer.state is VADState.SPEAKING
    analyzer.reset()
    assert analyzer.state is VADState.QUIET
    assert analyzer.volume == 0.0
