"""Opus through PyAV: 20 ms frames in, one packet each, back out at the same size with a
sine still recognisable, and the GIL still off on 3.13t."""

import subprocess
import sys
import sysconfig

import numpy as np
import pytest

from flowcat_ft.audio.opus import OpusDecoder, OpusEncoder


def sine(rate: int, seconds: float, frequency: float = 1000.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.rint(10000 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def snr_db(signal: np.ndarray, rate: int, frequency: float) -> tuple[float, float]:
    """How well *signal* fits a sine of *frequency* (any phase): SNR in dB, and amplitude."""
    t = np.arange(len(signal)) / rate
    basis = np.stack([np.sin(2 * np.pi * frequency * t), np.cos(2 * np.pi * frequency * t)], 1)
    coefficients, *_ = np.linalg.lstsq(basis, signal.astype(np.float64), rcond=None)
    fit = basis @ coefficients
    noise = signal - fit
    return 10 * np.log10(np.sum(fit**2) / np.sum(noise**2)), float(np.hypot(*coefficients))


@pytest.mark.parametrize("rate", [48000, 24000, 16000, 8000])
def test_a_sine_survives_a_round_trip(rate):
    encoder, decoder = OpusEncoder(rate), OpusDecoder(rate)
    n = rate // 50
    assert encoder.frame_samples == n
    pcm = sine(rate, 1.0)
    out = np.empty(n, np.int16)
    decoded, sizes = [], []
    for start in range(0, len(pcm), n):
        packet = encoder.encode(pcm[start : start + n])
        sizes.append(len(packet))
        assert decoder.decode(packet, out) == n
        decoded.append(out.copy())
    # 32 kbit/s is 80 bytes per 20 ms frame, on average.
    assert 40 <= np.mean(sizes[5:]) <= 120
    settled = np.concatenate(decoded)[rate // 5 :]  # past the codec's start
    snr, amplitude = snr_db(settled, rate, 1000.0)
    assert snr >= 12.0  # a perceptual codec: far from transparent on a bare tone
    assert amplitude == pytest.approx(10000, rel=0.1)


def test_a_lower_bitrate_makes_smaller_packets():
    pcm = sine(16000, 0.5)
    sizes = {}
    for bitrate in (12000, 48000):
        encoder = OpusEncoder(16000, bitrate)
        sizes[bitrate] = sum(len(encoder.encode(pcm[i : i + 320])) for i in range(0, 8000, 320))
    assert sizes[12000] < 0.7 * sizes[48000]  # variable bitrate: not in proportion


def test_frames_of_the_wrong_size_and_rates_opus_lacks_are_refused():
    with pytest.raises(ValueError):
        OpusEncoder(16000).encode(np.zeros(480, np.int16))
    with pytest.raises(ValueError):
        OpusEncoder(44100)
    with pytest.raises(ValueError):
        OpusDecoder(22050)


def test_importing_pyav_keeps_the_gil_off():
    code = (
        "import sys\n"
        "import flowcat_ft.audio.opus\n"
        "print(sys._is_gil_enabled() if hasattr(sys, '_is_gil_enabled') else True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(not sysconfig.get_config_var("Py_GIL_DISABLED"))
