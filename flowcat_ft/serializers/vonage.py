"""Vonage (formerly Nexmo) Voice API WebSockets: an NCCO ``connect`` to a ``websocket``
endpoint.

Source: https://developer.vonage.com/en/voice/voice-api/concepts/websockets

Audio travels as binary frames of raw 16-bit little-endian mono PCM, 20 ms each: 320 bytes
at 8000 Hz, 640 at 16000 Hz, 960 at 24000 Hz; the NCCO's ``content-type`` chooses the rate.
Vonage sends, as text frames with a JSON object::

    {"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
     "language": "en-GB", "caller-id": "447700900123"}
    {"event": "websocket:dtmf", "digit": "5", "duration": 260}
    {"event": "websocket:cleared"}
    {"event": "websocket:notify", "payload": {...}}

The first message is always ``websocket:connected``: it carries the audio format and, at the
top level, the NCCO endpoint's ``headers`` (the stream's parameters). Binary audio follows,
with JSON events interleaved.

The application sends binary frames of audio in the same format, each of exactly 20 ms
(Vonage buffers about 20 s of them), and text frames with JSON commands::

    {"action": "clear"}                   stop playing and drop the buffered audio;
                                          answered by websocket:cleared
    {"action": "notify", "payload": {}}   answered by websocket:notify with the same payload
                                          once the audio sent before it has played

Older versions of the guide described no command at all: the only way to interrupt playback
was to stop sending and let the buffer drain. ``send_mark`` sends a ``notify`` whose payload
is ``{"name": NAME}``; the ``websocket:notify`` that echoes it becomes :class:`MarkPlayed`.

The guide says further JSON events "may be sent at any point in the call" and applications
should look at ``event`` to decide whether one is of interest, so unknown events are
:class:`Ignored` (``ignore_unknown_events=False`` makes them close the connection). The
Vonage call has no id on the socket: ``call_id`` and ``stream_id`` are empty unless the
application passes them as headers, which land in ``metadata["parameters"]``. Assumed, not
documented in the guide: DTMF also arrives as ``{"dtmf": {"digit": "5"}}``, as some
integrations read it; both shapes are accepted.
"""

from __future__ import annotations

from typing import Any

from websockets.frames import CloseCode

from flowcat_ft.serializers._json import JsonSerializer, dumps, optional, require
from flowcat_ft.serializers.base import Event, Ignored, ProtocolError, StreamStarted, quoted

__all__ = ["VonageSerializer"]

SAMPLE_RATES = {"8000": 8000, "16000": 16000, "24000": 24000}
_CLEAR = dumps({"action": "clear"})


def parse_content_type(content_type: str) -> int:
    """The sample rate in ``audio/l16;rate=16000``; any other format is refused (1003)."""
    media_type, _, parameter = content_type.partition(";")
    key, _, rate = parameter.partition("=")
    rate = rate.strip()
    if media_type.strip().lower() == "audio/l16" and key.strip() == "rate" and rate in SAMPLE_RATES:
        return SAMPLE_RATES[rate]
    raise ProtocolError(
        f"unsupported content-type {quoted(content_type)}: expected audio/l16;rate=R with R one "
        f"of {', '.join(SAMPLE_RATES)}",
        CloseCode.UNSUPPORTED_DATA,
    )


class VonageSerializer(JsonSerializer):
    """Vonage Voice WebSockets: binary 16-bit PCM, JSON text events and commands."""

    name = "vonage"
    ignores_unknown_events = True

    def _receive_event(self, event: str, message: dict[str, Any]) -> list[Event]:
        match event:
            case "websocket:connected":
                return self._start(self._parse_connected(message))
            case "websocket:dtmf":
                digit = optional(message, "digit", str, None)
                return self._dtmf(digit or require(message, "dtmf.digit", str))
            case "websocket:notify":
                return self._mark(require(message, "payload.name", str))
            case "websocket:cleared":
                return [Ignored(event)]
        return self._unknown(event)

    def _parse_connected(self, message: dict[str, Any]) -> StreamStarted:
        sample_rate = parse_content_type(require(message, "content-type", str))
        headers = {k: v for k, v in message.items() if k not in ("event", "content-type")}
        return StreamStarted(
            call_id="",
            stream_id="",
            sample_rate=sample_rate,
            codec="pcm16",
            channels=1,
            metadata={"parameters": headers, "message": message},
        )

    def _receive_binary(self, data: bytes) -> list[Event]:
        return self._audio(data)

    def send_audio(self, payload: bytes) -> bytes:
        self._outgoing_stream()
        return bytes(payload)

    def send_mark(self, name: str) -> str:
        self._outgoing_stream()
        return dumps({"action": "notify", "payload": {"name": name}})

    def send_clear(self) -> str:
        self._outgoing_stream()
        return _CLEAR
