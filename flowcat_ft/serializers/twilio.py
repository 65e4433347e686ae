"""Twilio Media Streams (bidirectional, ``<Connect><Stream>``).

Source: https://www.twilio.com/docs/voice/media-streams/websocket-messages

Every message is a JSON text frame. Twilio sends, in order::

    {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    {"event": "start", "sequenceNumber": "1", "streamSid": "MZ...",
     "start": {"streamSid": "MZ...", "accountSid": "AC...", "callSid": "CA...",
               "tracks": ["inbound"], "customParameters": {"FirstName": "Jane"},
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                               "channels": 1}}}
    {"event": "media", "sequenceNumber": "2", "streamSid": "MZ...",
     "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": BASE64}}
    {"event": "dtmf", "streamSid": "MZ...", "sequenceNumber": "5",
     "dtmf": {"track": "inbound_track", "digit": "1"}}
    {"event": "mark", "sequenceNumber": "4", "streamSid": "MZ...", "mark": {"name": "x"}}
    {"event": "stop", "sequenceNumber": "5", "streamSid": "MZ...",
     "stop": {"accountSid": "AC...", "callSid": "CA..."}}

and accepts ``media`` (base64 µ-law 8 kHz mono), ``mark`` and ``clear``, each with the
``streamSid``. A ``mark`` comes back when the audio before it has played, and also when a
``clear`` drops that audio. The payload is always µ-law at 8000 Hz, mono.

The documented set of messages is closed (``connected`` names the protocol version), so an
unknown event closes the connection unless ``ignore_unknown_events=True``.
"""

from __future__ import annotations

from typing import Any

from flowcat_ft.serializers._json import (
    MediaStreamSerializer,
    codec,
    optional,
    positive_int,
    require,
)
from flowcat_ft.serializers.base import StreamStarted

__all__ = ["TwilioSerializer"]

ENCODINGS = {"audio/x-mulaw": "mulaw"}


class TwilioSerializer(MediaStreamSerializer):
    """Twilio Media Streams: JSON text frames, base64 µ-law at 8 kHz."""

    name = "twilio"
    stream_key = "streamSid"

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        return StreamStarted(
            call_id=require(message, "start.callSid", str),
            stream_id=require(message, "start.streamSid", str),
            sample_rate=positive_int(message, "start.mediaFormat.sampleRate"),
            codec=codec(message, "start.mediaFormat.encoding", ENCODINGS),
            channels=positive_int(message, "start.mediaFormat.channels", default=1),
            metadata={
                "parameters": optional(message, "start.customParameters", dict, {}),
                "message": message,
            },
        )
