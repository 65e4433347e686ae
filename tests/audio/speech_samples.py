"""Real speech for the audio tests: espeak-ng utterances, cached per test session, laid out
with silence and noise at a known place so a test knows where the speech is.

espeak-ng's speech starts and stops sharply (its output is digital silence around it), so
where it is depends little on how quiet a sound must be to count, with one exception: at
8 kHz the "s" of "Yes." keeps only its energy below 4 kHz: 100 ms at -43 to -47 dBFS.  A
track therefore gives two sets of bounds: the loud speech (louder than -40 dBFS), which a
VAD must find, and the audible speech (louder than the noise over it), beyond which a VAD
must find nothing.
"""

from __future__ import annotations

import hashlib
import subprocess
import wave
from dataclasses import dataclass

import numpy as np
import pytest
from peers import need_program

from flowcat_ft.audio.resample import resample
from flowcat_ft.audio.vad import level_db

NOISE_RMS = 60.0  # white noise under everything: about -55 dBFS
SPEECH_DB = -40.0  # a 10 ms stretch of the clean utterance louder than this is loud speech


def espeak(tmp_path_factory: pytest.TempPathFactory, text: str, rate: int) -> np.ndarray:
    """*text* spoken by espeak-ng, as int16 samples at *rate* (made once per session)."""
    need_program("espeak-ng")
    cache = tmp_path_factory.getbasetemp() / "espeak"
    cache.mkdir(exist_ok=True)
    path = cache / f"{hashlib.sha1(text.encode()).hexdigest()[:16]}.wav"
    if not path.exists():
        partial = path.with_suffix(".part")
        subprocess.run(["espeak-ng", "-w", str(partial), text], check=True)
        partial.rename(path)
    with wave.open(str(path)) as wav:
        in_rate = wav.getframerate()
        speech = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
    return resample(speech, in_rate, rate)


def speech_bounds(
    speech: np.ndarray, rate: int, threshold_db: float = SPEECH_DB
) -> tuple[float, float]:
    """Where the speech in a clean utterance starts and ends, in seconds: the first and last
    10 ms louder than *threshold_db* (dBFS)."""
    step = rate // 100
    blocks = speech[: len(speech) // step * step].reshape(-1, step).astype(np.float64)
    level = 10 * np.log10(np.maximum(np.mean(blocks**2, axis=1), 1e-12) / 32768.0**2)
    loud = np.flatnonzero(level > threshold_db)
    return loud[0] * step / rate, (loud[-1] + 1) * step / rate


def pink_noise(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """*n* samples of noise of RMS 1 whose power falls 3 dB an octave from 20 Hz up."""
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / rate), 20.0))
    noise = np.fft.irfft(spectrum, n)
    return noise / np.sqrt(np.mean(noise**2))


@dataclass
class Track:
    """Utterances between stretches of silence, with noise over all of it."""

    pcm: np.ndarray
    rate: int
    segments: list[tuple[float, float]]  # where the loud speech is, in seconds
    audible: list[tuple[float, float]]  # where the speech louder than the noise is

    def frames(self, frame_ms: int = 20):
        """The track in frames of *frame_ms*, each with the time (s) at its end."""
        n = self.rate * frame_ms // 1000
        for start in range(0, len(self.pcm) - n + 1, n):
            yield (start + n) / self.rate, self.pcm[start : start + n]


def track(
    tmp_path_factory: pytest.TempPathFactory,
    texts: list[str],
    rate: int,
    gaps: list[float],
    seed: int = 0,
    noise_rms: float = NOISE_RMS,
    noise: str = "white",
) -> Track:
    """The utterances *texts*, after ``gaps[0]`` s of silence, separated by ``gaps[1:]``;
    one more gap than texts; *noise* ("white" or "pink") of *noise_rms* over it all."""
    assert len(gaps) == len(texts) + 1
    noise_db = level_db((noise_rms / 32768.0) ** 2)
    parts = [np.zeros(round(gaps[0] * rate))]
    segments = []
    audible = []
    for text, gap in zip(texts, gaps[1:], strict=True):
        speech = espeak(tmp_path_factory, text, rate)
        now = sum(len(part) for part in parts) / rate
        start, end = speech_bounds(speech, rate)
        segments.append((now + start, now + end))
        start, end = speech_bounds(speech, rate, noise_db)
        audible.append((now + start, now + end))
        parts += [speech.astype(np.float64), np.zeros(round(gap * rate))]
    signal = np.concatenate(parts)
    rng = np.random.default_rng(seed)
    if noise == "white":
        signal += rng.normal(0.0, noise_rms, len(signal))
    elif noise == "pink":
        signal += noise_rms * pink_noise(len(signal), rate, rng)
    else:
        raise ValueError(f"no {noise!r} noise")
    pcm = np.clip(np.rint(signal), -32768, 32767).astype(np.int16)
    return Track(pcm, rate, segments, audible)
