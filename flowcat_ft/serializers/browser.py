"""The browser playground's protocol: the raw protocol, plus what the page shows.

Audio and control messages are those of :mod:`~flowcat_ft.serializers.raw` with its
defaults, fixed: binary frames of 16-bit little-endian PCM at 16000 Hz, mono, both ways;
``start``, ``dtmf``, ``mark`` and ``stop`` from the page; ``mark`` and ``clear`` from the
server. The server also tells the page what happens in the conversation, one JSON object
per event (:meth:`BrowserSerializer.send_frame`)::

    {"event": "user_started_speaking"}          the user's turn began
    {"event": "user_stopped_speaking"}          ...and ended
    {"event": "transcript", "text": "what time is it", "final": true}
                                                what the user said (``final: false``: a
                                                guess that a later transcript replaces)
    {"event": "bot_started_speaking"}
    {"event": "bot_text", "text": "It is noon."}  words the bot has just spoken
    {"event": "bot_stopped_speaking"}
    {"event": "latency", "ms": 642.5}           this turn's latency: from the end of the
                                                user's turn to the first bot audio sent

The WebRTC gateway carries the same events on its ``events`` data channel.
"""

from __future__ import annotations

from flowcat_ft.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterimTranscriptionFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from flowcat_ft.serializers._json import dumps
from flowcat_ft.serializers.base import MAX_MESSAGE_BYTES
from flowcat_ft.serializers.raw import RawSerializer

__all__ = ["BrowserSerializer"]

_SPEAKING_EVENTS = {
    kind: dumps({"event": event})
    for kind, event in [
        (UserStartedSpeakingFrame, "user_started_speaking"),
        (UserStoppedSpeakingFrame, "user_stopped_speaking"),
        (BotStartedSpeakingFrame, "bot_started_speaking"),
        (BotStoppedSpeakingFrame, "bot_stopped_speaking"),
    ]
}


class BrowserSerializer(RawSerializer):
    """The raw protocol at 16 kHz PCM16, with the conversation's events for the page."""

    name = "browser"
    query_options = ()

    def __init__(
        self,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        ignore_unknown_events: bool | None = None,
    ) -> None:
        super().__init__(
            max_message_bytes=max_message_bytes, ignore_unknown_events=ignore_unknown_events
        )

    def send_frame(self, frame: Frame) -> str | None:
        kind = type(frame)
        message = _SPEAKING_EVENTS.get(kind)
        if message is not None:
            return message
        if kind is TranscriptionFrame or kind is InterimTranscriptionFrame:
            final = kind is TranscriptionFrame
            return dumps({"event": "transcript", "text": frame.text, "final": final})
        if kind is TTSTextFrame:
            return dumps({"event": "bot_text", "text": frame.text})
        if kind is MetricsFrame and "turn_latency_ms" in frame.data:
            return dumps({"event": "latency", "ms": round(frame.data["turn_latency_ms"], 1)})
        return None
