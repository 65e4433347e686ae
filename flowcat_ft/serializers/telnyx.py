"""Telnyx media streaming (Call Control ``streaming_start`` or TeXML ``<Stream>``), in the
bidirectional ``rtp`` mode.

Sources: https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming and the
AsyncAPI reference at
https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket

Twilio's shape with snake_case names, the stream id at the top level, and no stream id in
what the application sends. Telnyx sends::

    {"event": "connected", "version": "1.0.0"}
    {"event": "start", "sequence_number": "1", "stream_id": "32DE0DEA-...",
     "start": {"user_id": "...", "call_control_id": "v3:...", "call_session_id": "...",
               "from": "+13122010094", "to": "+13122123456", "client_state": "...",
               "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
    {"event": "media", "sequence_number": "4", "stream_id": "...",
     "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": BASE64}}
    {"event": "dtmf", "stream_id": "...", "sequence_number": "5", "dtmf": {"digit": "1"}}
    {"event": "mark", "stream_id": "...", "mark": {"name": "x"}}
    {"event": "error", "stream_id": "...", "sequence_number": "6",
     "error": {"title": "rate_limit_reached", "code": "100005", "detail": "Too many requests"}}
    {"event": "stop", "sequence_number": "5", "stream_id": "...",
     "stop": {"user_id": "...", "call_control_id": "v3:..."}}

and accepts ``{"event": "media", "media": {"payload": BASE64}}`` (20 ms to 30 s of RTP
payload in the bidirectional codec), ``{"event": "mark", "mark": {"name": "x"}}`` and
``{"event": "clear"}``. An ``error`` reports a bad message from the application (codes
100002-100005) and does not end the stream: it comes out as :class:`Ignored` with the error in
its ``detail``, for the transport to log.

Encodings: ``PCMU`` and ``PCMA`` (also written ``audio/x-mulaw`` in older examples) and
``L16``, which as an RTP payload is big-endian (RFC 3551): this serializer swaps its bytes
both ways, so that ``AudioIn`` and ``send_audio`` carry flowcat's little-endian ``pcm16``.
G722, OPUS and AMR-WB are refused with 1003. The stream's codec is set when it is started
(``stream_bidirectional_codec`` should match ``stream_codec``).

Assumed, not documented: custom parameters arrive as an object in ``start.custom_parameters``.
The AsyncAPI set of events is closed: an unknown event closes the connection unless
``ignore_unknown_events=True``.
"""

from __future__ import annotations

from array import array
from typing import Any

from flowcat_ft.serializers._json import (
    MediaStreamSerializer,
    codec,
    optional,
    positive_int,
    require,
)
from flowcat_ft.serializers.base import Event, Ignored, StreamStarted

__all__ = ["TelnyxSerializer"]

ENCODINGS = {
    "PCMU": "mulaw",
    "PCMA": "alaw",
    "L16": "pcm16",
    "audio/x-mulaw": "mulaw",
    "audio/x-alaw": "alaw",
}


def _swap_bytes(pcm: bytes) -> bytes:
    """16-bit samples from one byte order to the other (``pcm`` holds whole samples:
    ``array`` refuses a partial one with ValueError)."""
    samples = array("h", pcm)
    samples.byteswap()
    return samples.tobytes()


class TelnyxSerializer(MediaStreamSerializer):
    """Telnyx media streaming: JSON text frames, base64 RTP payloads."""

    name = "telnyx"
    stream_key = None

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        return StreamStarted(
            call_id=require(message, "start.call_control_id", str),
            stream_id=require(message, "stream_id", str),
            sample_rate=positive_int(message, "start.media_format.sample_rate"),
            codec=codec(message, "start.media_format.encoding", ENCODINGS),
            channels=positive_int(message, "start.media_format.channels", default=1),
            metadata={
                "parameters": optional(message, "start.custom_parameters", dict, {}),
                "message": message,
            },
        )

    def _receive_event(self, event: str, message: dict[str, Any]) -> list[Event]:
        if event == "error":
            error = optional(message, "error", dict, {})
            parts = (str(error[key]) for key in ("code", "title", "detail") if key in error)
            return [Ignored(event, " ".join(parts))]
        return super()._receive_event(event, message)

    def _audio(self, payload: bytes) -> list[Event]:
        # A partial sample is left as it is, for the base class to refuse.
        if self.codec == "pcm16" and len(payload) % 2 == 0:
            payload = _swap_bytes(payload)
        return super()._audio(payload)

    def send_audio(self, payload: bytes) -> str:
        if self._outgoing_stream().codec == "pcm16":
            payload = _swap_bytes(payload)
        return super().send_audio(payload)
