"""Exotel AgentStream: the bidirectional Voicebot applet (and the one-way Stream applet).

Sources: https://developer.exotel.com/docs/agentstream/websocket-protocol and
https://developer.exotel.com/docs/agentstream/stream-voicebot-applet

Twilio's shape with snake_case names (``stream_sid``, also in what the application sends),
and raw PCM instead of µ-law. Exotel sends::

    {"event": "connected"}
    {"event": "start", "sequence_number": "1", "stream_sid": "MZ...",
     "start": {"stream_sid": "MZ...", "call_sid": "CA...", "account_sid": "AC...",
               "from": "+919876543210", "to": "+918047491899",
               "custom_parameters": {"key1": "value1"},
               "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000",
                                "bit_rate": "16"}}}
    {"event": "media", "sequence_number": "3", "stream_sid": "MZ...",
     "media": {"chunk": "2", "timestamp": "200", "payload": BASE64}}
    {"event": "dtmf", "sequence_number": "7", "stream_sid": "MZ...",
     "dtmf": {"digit": "5", "duration": "100"}}
    {"event": "mark", "sequence_number": "15", "stream_sid": "MZ...", "mark": {"name": "x"}}
    {"event": "stop", "sequence_number": "20", "stream_sid": "MZ...",
     "stop": {"call_sid": "CA...", "account_sid": "AC...", "reason": "callended"}}

(``reason`` is ``stopped`` when the applet ended, ``callended`` when the caller hung up) and
accepts ``media``, ``mark`` and ``clear``, each with the ``stream_sid``::

    {"event": "media", "stream_sid": "MZ...", "media": {"payload": BASE64}}
    {"event": "mark", "stream_sid": "MZ...", "mark": {"name": "x"}}
    {"event": "clear", "stream_sid": "MZ..."}

Audio is raw/slin: 16-bit little-endian mono PCM, at 8000 Hz by default, or 16000 or 24000
Hz (chosen with the ``sample-rate`` query parameter of the stream URL). The sample rate is
sent as a string. Exotel sends audio in chunks of about 100 ms and documents that audio sent
to it must come in chunks of 3.2 kB (100 ms at 8 kHz) to 100 kB, each a multiple of 320
bytes: hence :attr:`audio_chunk_ms` 100, for the transport's pacing.

The documented set of events is closed: an unknown event closes the connection unless
``ignore_unknown_events=True``.
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

__all__ = ["ExotelSerializer"]

ENCODINGS = {"audio/x-raw": "pcm16", "raw/slin": "pcm16"}


class ExotelSerializer(MediaStreamSerializer):
    """Exotel AgentStream: JSON text frames, base64 16-bit PCM."""

    name = "exotel"
    stream_key = "stream_sid"
    audio_chunk_ms = 100

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        return StreamStarted(
            call_id=require(message, "start.call_sid", str),
            stream_id=require(message, "start.stream_sid", str),
            sample_rate=positive_int(message, "start.media_format.sample_rate"),
            codec=codec(message, "start.media_format.encoding", ENCODINGS),
            channels=1,
            metadata={
                "parameters": optional(message, "start.custom_parameters", dict, {}),
                "message": message,
            },
        )

    def _stop_reason(self, message: dict[str, Any]) -> str:
        return optional(message, "stop.reason", str, "stop")
