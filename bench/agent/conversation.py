"""One run of the native load generator in conversation mode, and the phrases it says.

The load generator (``bench/loadgen/loadgen.c``, built and run by
:mod:`bench.echo.loadgen`) plays each call's caller: it waits for the greeting, says the
questions in turn one every ``period`` seconds, and says goodbye once the window has
closed (with ``barge_in``: that many seconds into the reply to the last question, over
it). Calls open evenly over one period, so their questions spread evenly over it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from bench.agent import speech
from flowcat_ft.server.streamtokens import StreamTokens

QUESTIONS = (
    "please tell me the weather",
    "what is the time",
    "how is the weather",
    "tell me the time",
)
"""Questions the default offline agent's graph answers, and that PocketSphinx hears in
espeak-ng's voice at 8 kHz (``flowcat_ft/services/offline/default_agent.yaml``; "what time
is it", say, is heard as nothing)."""
GOODBYE = "goodbye"


@dataclass(frozen=True)
class Voices:
    """The callers' clips: questions, goodbye, and line noise (µ-law files)."""

    questions: tuple[Path, ...]
    goodbye: Path
    noise: Path

    @classmethod
    def make(cls, directory: Path, questions: tuple[str, ...] = QUESTIONS) -> Voices:
        """Speak every phrase into ``directory`` (see :mod:`bench.agent.speech`)."""
        directory.mkdir(parents=True, exist_ok=True)
        made = tuple(speech.say(q, directory / speech.file_name(q)) for q in questions)
        goodbye = speech.say(GOODBYE, directory / speech.file_name(GOODBYE))
        return cls(made, goodbye, speech.line_noise(directory / "line-noise.ulaw"))


@dataclass(frozen=True)
class Conversations:
    """``calls`` callers talking to an agent on ``/twilio``: opened over ``period`` s
    (at most), greeted, then ``warmup`` s before the ``seconds`` s window whose utterances
    are measured; up to ``grace`` s after it for the goodbyes and the agent ending calls.
    ``cpus``: the CPUs the load generator runs on (None: any). Runs with
    :func:`bench.echo.loadgen.run`."""

    calls: int
    voices: Voices
    seconds: float = 48.0
    warmup: float = 8.0
    period: float = 8.0
    greeting_timeout: float = 10.0
    barge_in: float | None = None
    cpus: tuple[int, ...] | None = None

    @property
    def ramp(self) -> float:
        """Calls open at up to 10 per second, over at most one period."""
        return min(self.period, max(0.2, self.calls / 10))

    @property
    def grace(self) -> float:
        """Time for the last question's reply, the goodbye, its reply and the hang-up."""
        return 2 * self.period + 8.0

    def argv(self, binary: Path, port: int) -> list[str]:
        argv = [str(binary), "--port", str(port), "--path", stream_path()]
        argv += ["--calls", str(self.calls), "--ramp", f"{self.ramp:g}"]
        argv += ["--warmup", f"{self.warmup:g}", "--seconds", f"{self.seconds:g}"]
        argv += ["--grace", f"{self.grace:g}", "--period", f"{self.period:g}"]
        argv += ["--greeting-timeout", f"{self.greeting_timeout:g}"]
        for clip in self.voices.questions:
            argv += ["--clip", str(clip)]
        argv += ["--goodbye", str(self.voices.goodbye), "--noise", str(self.voices.noise)]
        if self.barge_in is not None:
            argv += ["--barge-in", f"{self.barge_in:g}"]
        return argv

    @property
    def longest(self) -> float:
        """Seconds the load generator may take at most (it gives up 30 s past its plan)."""
        return self.ramp + self.warmup + self.seconds + self.grace + 35


STREAM_KEY_ENV = "FLOWCAT_BENCH_STREAM_KEY"
"""Where the server under test (``bench/agent/offline.yaml``) finds its stream token key."""


def stream_key() -> str:
    """The key in :data:`STREAM_KEY_ENV`, made for this process if not set (the servers it
    starts inherit it)."""
    return os.environ.setdefault(STREAM_KEY_ENV, secrets.token_urlsafe(32))


def stream_path() -> str:
    """``/twilio/<token>``: the stream route with a token that admits any call for a day."""
    return "/twilio/" + StreamTokens(stream_key().encode()).issue("twilio", ttl=86400)
