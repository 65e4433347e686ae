"""The callers' voices: what they say, as 8 kHz µ-law files made at run time.

espeak-ng speaks each phrase (WAV on stdout) and sox turns it into headerless µ-law at
8 kHz, the audio of a Twilio media stream, with the silence espeak-ng leaves before and
after the words trimmed off, so a clip ends where the caller stops speaking. Between
utterances a caller's line is not digitally silent: sox makes a few seconds of quiet
white noise (about -55 dBFS), which the load generator loops. Both programs are Debian
packages that ``ci/system-packages.sh`` installs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

RATE = 8000
NOISE_SECS = 10
NOISE_VOLUME = 0.003
"""White noise at ±0.3% of full scale: an RMS of about 57 in 16-bit samples."""

_TRIM = ["silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse"]
_ULAW = ["-r", str(RATE), "-c", "1", "-e", "u-law", "-t", "raw"]


def missing() -> list[str]:
    """The programs this module needs that are not installed."""
    return [name for name in ("espeak-ng", "sox") if shutil.which(name) is None]


def say(text: str, path: Path) -> Path:
    """``text`` spoken by espeak-ng into ``path`` as trimmed 8 kHz µ-law; ``path``."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    subprocess.run(["sox", "-t", "wav", "-", *_ULAW, str(path), *_TRIM], input=wav, check=True)
    if path.stat().st_size < RATE // 10:
        raise RuntimeError(f"espeak-ng and sox made under 0.1 s of speech for {text!r}")
    return path


def line_noise(path: Path) -> Path:
    """Quiet white noise, :data:`NOISE_SECS` long, into ``path``; ``path``."""
    volume = ["vol", str(NOISE_VOLUME)]
    synth = ["synth", str(NOISE_SECS), "whitenoise"]
    subprocess.run(["sox", "-n", *_ULAW, str(path), *synth, *volume], check=True)
    return path


def clip_seconds(path: Path) -> float:
    """How long a µ-law clip lasts."""
    return path.stat().st_size / RATE


def file_name(text: str) -> str:
    """A file name for a phrase: its words joined by dashes."""
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return "-".join(words) + ".ulaw"
