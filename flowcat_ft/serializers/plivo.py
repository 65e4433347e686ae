"""Plivo Audio Streams (the ``<Stream bidirectional="true">`` XML element).

Sources: https://www.plivo.com/docs/voice/audio-streaming/audio-streaming (the stream event
protocol) and https://www.plivo.com/docs/voice/xml/the-stream-element/checkpoint-event

Every message is a JSON text frame; numbers are JSON numbers. Plivo sends::

    {"event": "start", "sequenceNumber": 1,
     "start": {"callId": "...", "streamId": "...", "accountId": "MA...",
               "tracks": ["inbound"],
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
     "extra_headers": "userId=12345;sessionId=abc-xyz"}
    {"event": "media", "sequenceNumber": 42, "streamId": "...",
     "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 41,
               "payload": BASE64}}
    {"event": "dtmf", "streamId": "...", "dtmf": {"digit": "5"}}
    {"event": "playedStream", "streamId": "...", "name": "x"}
    {"event": "clearedAudio", "streamId": "..."}

and accepts::

    {"event": "playAudio",
     "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": BASE64}}
    {"event": "checkpoint", "streamId": "...", "name": "x"}
    {"event": "clearAudio", "streamId": "..."}

``playedStream`` answers a ``checkpoint`` once the audio queued before it has played (not if a
``clearAudio`` dropped it); ``clearedAudio`` acknowledges a ``clearAudio``. Encodings:
``audio/x-mulaw`` at 8000 Hz and ``audio/x-l16`` at 8000 or 16000 Hz (the ``contentType``
attribute of ``<Stream>``; Plivo's default is L16 at 8000 Hz).

There is no ``stop`` message in Plivo's protocol: the end of a stream is the socket closing
(and an HTTP status callback). Assumed, not documented: the DTMF shape above (as the
integrations that handle it read it); L16 is little-endian; a ``stop`` sent anyway, as some
integrations expect, ends the stream; ``played`` (the name in an older Plivo support
article) means ``playedStream``. ``extra_headers`` (``k=v`` pairs separated by ``;`` or
``,``) become the stream's parameters. The documented set of events is closed otherwise: an
unknown event closes the connection unless ``ignore_unknown_events=True``.
"""

from __future__ import annotations

from typing import Any

from flowcat_ft.serializers._json import (
    JsonSerializer,
    b64encode,
    codec,
    dumps,
    optional,
    positive_int,
    require,
)
from flowcat_ft.serializers.base import Event, Ignored, StreamStarted, StreamStopped

__all__ = ["PlivoSerializer"]

ENCODINGS = {"audio/x-mulaw": "mulaw", "audio/x-l16": "pcm16"}
CONTENT_TYPES = {codec: encoding for encoding, codec in ENCODINGS.items()}


def parse_extra_headers(text: str) -> dict[str, str]:
    """``"userId=12345;sessionId=abc"`` as a dict; items without ``=`` are left out."""
    pairs = (item.partition("=") for item in text.replace(",", ";").split(";"))
    return {key.strip(): value.strip() for key, sep, value in pairs if sep and key.strip()}


class PlivoSerializer(JsonSerializer):
    """Plivo Audio Streams: JSON text frames, base64 µ-law or 16-bit PCM."""

    name = "plivo"

    def _receive_event(self, event: str, message: dict[str, Any]) -> list[Event]:
        match event:
            case "start":
                return self._start(self._parse_start(message))
            case "media":
                return self._media(message)
            case "dtmf":
                return self._dtmf(require(message, "dtmf.digit", str))
            case "playedStream" | "played":
                return self._mark(require(message, "name", str))
            case "clearedAudio":
                return [Ignored(event)]
            case "stop":
                return [StreamStopped("stop")]
        return self._unknown(event)

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        return StreamStarted(
            call_id=require(message, "start.callId", str),
            stream_id=require(message, "start.streamId", str),
            sample_rate=positive_int(message, "start.mediaFormat.sampleRate"),
            codec=codec(message, "start.mediaFormat.encoding", ENCODINGS),
            channels=1,
            metadata={
                "parameters": parse_extra_headers(optional(message, "extra_headers", str, "")),
                "message": message,
            },
        )

    def send_audio(self, payload: bytes) -> str:
        stream = self._outgoing_stream()
        media = {
            "contentType": CONTENT_TYPES[stream.codec],
            "sampleRate": stream.sample_rate,
            "payload": b64encode(payload),
        }
        return dumps({"event": "playAudio", "media": media})

    def send_mark(self, name: str) -> str:
        stream = self._outgoing_stream()
        return dumps({"event": "checkpoint", "streamId": stream.stream_id, "name": name})

    def send_clear(self) -> str:
        return dumps({"event": "clearAudio", "streamId": self._outgoing_stream().stream_id})
