"""A call's conversation as the caller heard it: what each side said, turn by turn.

:class:`TranscriptRecorder` sits at the output end of a pipeline, after the stage that lets
the bot's audio out at real time (such as
:class:`~flowcat_ft.services.offline.playout.BotPlayout`), so the bot's words reach it as
they are heard: a :class:`~flowcat_ft.frames.TTSTextFrame` follows the audio it names.
What the caller says reaches it as final :class:`~flowcat_ft.frames.TranscriptionFrame`\\ s,
which an LLM stage passes on. An interruption closes the bot's turn where the
caller cut it off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowcat_ft.frames import (
    Direction,
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    TTSTextFrame,
)
from flowcat_ft.processor import FrameProcessor

__all__ = ["Transcript", "TranscriptRecorder", "Turn"]


@dataclass(slots=True)
class Turn:
    """What one side said. ``interrupted`` marks a bot turn the caller cut off."""

    role: str  # "user" or "assistant"
    content: str
    interrupted: bool = False


@dataclass
class Transcript:
    """The turns of one call, oldest first.

    Not locked: one stage thread writes it while the call runs (read it from elsewhere
    once the call has ended, or accept a moment-old view).
    """

    turns: list[Turn] = field(default_factory=list)

    def add(self, role: str, content: str) -> Turn:
        turn = Turn(role, content)
        self.turns.append(turn)
        return turn

    def to_messages(self) -> list[dict[str, str]]:
        """The conversation as chat-completion messages (``role`` and ``content``)."""
        return [{"role": t.role, "content": t.content} for t in self.turns]


class TranscriptRecorder(FrameProcessor):
    """Record the call's conversation in :attr:`transcript`; every frame passes on.

    A final transcript adds a user turn (consecutive ones join); the spoken text that
    follows adds to one assistant turn, until the next user turn or an interruption,
    which marks it ``interrupted``.
    """

    def __init__(self, transcript: Transcript | None = None, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.transcript = transcript if transcript is not None else Transcript()
        self._assistant: Turn | None = None  # the assistant turn being heard

    def process(self, frame: Frame, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            if isinstance(frame, TTSTextFrame):
                self._heard(frame.text)
            elif isinstance(frame, TranscriptionFrame) and not isinstance(
                frame, InterimTranscriptionFrame
            ):
                self._said(frame.text)
        self.push(frame, direction)

    def _heard(self, text: str) -> None:
        if self._assistant is None:
            self._assistant = self.transcript.add("assistant", text)
        else:
            self._assistant.content += " " + text

    def _said(self, text: str) -> None:
        self._assistant = None
        turns = self.transcript.turns
        if turns and turns[-1].role == "user":
            turns[-1].content += " " + text
        else:
            self.transcript.add("user", text)

    def on_interruption(self) -> None:
        if self._assistant is not None:
            self._assistant.interrupted = True
            self._assistant = None
