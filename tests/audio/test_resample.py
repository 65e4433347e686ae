"""StreamingResampler: framing, accuracy, alias rejection and continuity at frame edges."""

import itertools
import math

import numpy as np
import pytest

from flowcat_ft.audio.resample import StreamingResampler, resample

RATES = (8000, 16000, 24000, 48000)
PAIRS = [pair for pair in itertools.product(RATES, RATES) if pair[0] != pair[1]]


def to_int16(signal: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(signal), -32768, 32767).astype(np.int16)


def sine(frequency: float, rate: int, n: int, amplitude: float, delay: int = 0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * frequency * (np.arange(n) - delay) / rate)


def one_shot(resampler: StreamingResampler, signal: np.ndarray) -> np.ndarray:
    out = np.empty(resampler.out_samples(len(signal)), np.int16)
    assert resampler.process(signal, out) == len(out)
    return out


def framewise(resampler: StreamingResampler, signal: np.ndarray, sizes) -> list[np.ndarray]:
    """Process signal cut into frames of the given sizes, cycled; return each frame's output."""
    out = np.empty(4 * max(sizes) * 6, np.int16)
    frames = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(signal):
            return frames
        n = resampler.process(signal[start : start + size], out)
        frames.append(out[:n].copy())
        start += size


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_20ms_frames_give_the_one_shot_output_at_a_constant_count(in_rate, out_rate):
    signal = to_int16(np.random.default_rng(1).normal(0, 6000, in_rate // 2))
    expected = one_shot(StreamingResampler(in_rate, out_rate), signal)
    frames = framewise(StreamingResampler(in_rate, out_rate), signal, [in_rate // 50])
    assert {len(frame) for frame in frames} == {out_rate // 50}
    np.testing.assert_array_equal(np.concatenate(frames), expected)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (48000, 16000), (16000, 24000)])
def test_frames_of_any_size_give_the_one_shot_output(in_rate, out_rate):
    signal = to_int16(np.random.default_rng(2).normal(0, 6000, in_rate // 4))
    expected = one_shot(StreamingResampler(in_rate, out_rate), signal)
    resampler = StreamingResampler(in_rate, out_rate)
    frames = framewise(resampler, signal, [1, 7, 0, 2, 333, 2 * in_rate // 50])
    np.testing.assert_array_equal(np.concatenate(frames), expected)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_a_tone_in_the_passband_comes_out_clean(in_rate, out_rate):
    resampler = StreamingResampler(in_rate, out_rate)
    amplitude = 12000.0
    output = one_shot(resampler, to_int16(sine(1000.0, in_rate, in_rate // 2, amplitude)))
    ideal = sine(1000.0, out_rate, len(output), amplitude, resampler.delay_samples)
    # Skip the filter's start-up, twice its delay from a silent history.
    settled = slice(2 * resampler.delay_samples, None)
    error = output[settled] - ideal[settled]
    snr = 10 * math.log10(np.sum(ideal[settled] ** 2) / np.sum(error**2))
    assert snr >= 50.0


def test_a_tone_above_the_output_nyquist_is_not_aliased():
    resampler = StreamingResampler(48000, 8000)
    amplitude = 16000.0
    output = one_shot(resampler, to_int16(sine(6000.0, 48000, 48000 // 2, amplitude)))
    rms = np.sqrt(np.mean(output[2 * resampler.delay_samples :].astype(np.float64) ** 2))
    assert rms <= amplitude / math.sqrt(2) * 10 ** (-50 / 20)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 48000), (48000, 8000), (24000, 16000)])
def test_a_sweep_has_no_jump_at_frame_edges(in_rate, out_rate):
    amplitude, low, high = 12000.0, 100.0, 0.7 * min(in_rate, out_rate) / 2
    t = np.arange(in_rate) / in_rate  # one second, the frequency rising linearly
    signal = to_int16(amplitude * np.sin(2 * np.pi * (low * t + (high - low) / 2 * t**2)))
    frames = framewise(StreamingResampler(in_rate, out_rate), signal, [in_rate // 50])
    output = np.concatenate(frames).astype(np.int32)
    jumps = np.abs(np.diff(output))
    edges = np.cumsum([len(frame) for frame in frames])[:-1] - 1
    # The steepest slope of the ideal sweep, per output sample, with a little slack.
    bound = 1.05 * 2 * np.pi * high * amplitude / out_rate + 2
    assert jumps.max() <= bound
    assert jumps[edges].max() <= jumps.max()
    one_shot_output = one_shot(StreamingResampler(in_rate, out_rate), signal).astype(np.int32)
    assert jumps.max() == np.abs(np.diff(one_shot_output)).max()


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_a_constant_comes_out_unchanged(in_rate, out_rate):
    resampler = StreamingResampler(in_rate, out_rate)
    output = one_shot(resampler, np.full(in_rate // 10, -1234, np.int16))
    assert np.all(output[2 * resampler.delay_samples + 1 :] == -1234)


def test_same_rate_passes_samples_through():
    resampler = StreamingResampler(16000, 16000)
    signal = to_int16(np.random.default_rng(3).normal(0, 6000, 320))
    assert resampler.delay_samples == 0
    np.testing.assert_array_equal(one_shot(resampler, signal), signal)


def test_reset_starts_a_new_stream():
    signal = to_int16(np.random.default_rng(4).normal(0, 6000, 960))
    resampler = StreamingResampler(48000, 16000)
    first = one_shot(resampler, signal)
    resampler.reset()
    np.testing.assert_array_equal(one_shot(resampler, signal), first)


def test_streams_of_one_ratio_share_a_filter_none_can_change():
    speech, other = StreamingResampler(22050, 8000), StreamingResampler(22050, 8000)
    assert speech._kernels is other._kernels  # designed once
    with pytest.raises(ValueError, match="read-only"):
        speech._kernels[0, 0] = 1.0


def test_out_samples_counts_the_next_call():
    resampler = StreamingResampler(48000, 8000)
    assert resampler.out_samples(960) == 160
    assert resampler.out_samples(5) == 1  # input sample 0 gives output sample 0
    resampler.process(np.zeros(5, np.int16), np.empty(1, np.int16))
    assert resampler.out_samples(1) == 0  # output sample 1 needs input sample 6
    assert resampler.out_samples(2) == 1


def test_out_too_short_is_refused():
    resampler = StreamingResampler(8000, 16000)
    with pytest.raises(ValueError):
        resampler.process(np.zeros(160, np.int16), np.empty(319, np.int16))


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 8000), (22050, 16000)])
def test_a_whole_clip_comes_out_aligned_and_whole(in_rate, out_rate):
    n = in_rate // 2 + 37
    clip = to_int16(sine(440.0, in_rate, n, 8000.0))
    out = resample(clip, in_rate, out_rate)
    assert len(out) == n * out_rate // in_rate
    # No lag: the output is the same sine at the new rate, to its last sample.
    ideal = sine(440.0, out_rate, len(out), 8000.0)
    assert np.max(np.abs(out[20:-20] - ideal[20:-20])) < 80
    assert resample(clip, in_rate, in_rate) is not clip and np.array_equal(
        resample(clip, in_rate, in_rate), clip
    )
