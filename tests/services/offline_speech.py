"""Helpers for the offline-service tests: espeak-ng speech as 16 kHz PCM, and the
PocketSphinx worker's python (a missing one is a missing peer: see :mod:`peers`)."""

from __future__ import annotations

import functools
import io
import subprocess
import wave

import numpy as np
from peers import missing, need_program

from flowcat_ft.audio.resample import resample
from flowcat_ft.services.offline.sphinx_pool import SphinxWorkerError, find_worker_python

RATE = 16000
NOISE_RMS = 60.0  # a caller's line is never digitally silent: about -55 dBFS of noise


@functools.cache
def _worker_python() -> str | None:
    try:
        python = find_worker_python()
    except SphinxWorkerError:
        return None
    done = subprocess.run([python, "-c", "import pocketsphinx"], capture_output=True)
    return python if done.returncode == 0 else None


def need_worker_python() -> str:
    """The GIL python with pocketsphinx, or :func:`peers.missing`."""
    python = _worker_python()
    if python is None:
        missing("no GIL python with pocketsphinx", "ci/venvs.sh installs it in .venv-gil")
    return python


@functools.cache
def _say(text: str, rate: int) -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        in_rate = reader.getframerate()
        speech = np.frombuffer(reader.readframes(reader.getnframes()), np.int16)
    return resample(speech, in_rate, rate).tobytes()


def say(text: str, rate: int = RATE) -> np.ndarray:
    """*text* spoken by espeak-ng, as int16 samples at *rate* (made once per session)."""
    need_program("espeak-ng")
    return np.frombuffer(_say(text, rate), np.int16)


def with_noise(pcm: np.ndarray, seed: int = 0) -> np.ndarray:
    """*pcm* with a line's noise floor under it."""
    noisy = pcm + np.random.default_rng(seed).normal(0.0, NOISE_RMS, len(pcm))
    return np.clip(np.rint(noisy), -32768, 32767).astype(np.int16)


def silence(secs: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(secs * rate), np.int16)
