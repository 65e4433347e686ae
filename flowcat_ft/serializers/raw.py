"""flowcat's own protocol, for custom clients and browsers: raw audio, and a little JSON.

Binary frames carry audio, both ways, in the codec and at the rate the server is configured
with (by default 16-bit little-endian PCM at 16000 Hz; µ-law and A-law are the other choices),
mono, in frames of any whole number of samples (the server sends 20 ms). Text frames carry
control messages, each a JSON object naming its ``event``.

From the client::

    {"event": "start", "call_id": "c1", "stream_id": "s1", "parameters": {"lang": "fr"}}
    {"event": "dtmf", "digit": "5"}
    {"event": "mark", "name": "m1"}      the audio sent before the server's mark m1 has played
    {"event": "stop", "reason": "bye"}

From the server::

    {"event": "mark", "name": "m1"}      echo it back once the audio before it has played
    {"event": "clear"}                   drop the audio not played yet: the user interrupted

The stream starts with the client's first message. ``start`` is optional and allowed only as
the first message; all its fields are optional. A client that sends audio straight away gets
a stream with empty ids and no parameters. Echoing marks is optional too: a client that does
not simply never reports playback. Any other event, or a binary frame of a partial 16-bit
sample, closes the connection.
"""

from __future__ import annotations

from typing import Any

from flowcat_ft.frames import CODECS, SAMPLE_RATES
from flowcat_ft.serializers._json import JsonSerializer, dumps, optional, require
from flowcat_ft.serializers.base import (
    MAX_MESSAGE_BYTES,
    Event,
    StreamStarted,
    StreamStopped,
    quoted,
)

__all__ = ["RawSerializer"]

_CLEAR = dumps({"event": "clear"})


class RawSerializer(JsonSerializer):
    """Binary audio in a configured codec and rate (one of
    :data:`~flowcat_ft.frames.SAMPLE_RATES`); JSON control messages."""

    name = "raw"
    query_options = ("codec", "sample_rate")

    def __init__(
        self,
        *,
        codec: str = "pcm16",
        sample_rate: int = 16000,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        ignore_unknown_events: bool | None = None,
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {quoted(codec)}")
        if not (isinstance(sample_rate, int) and sample_rate in SAMPLE_RATES):
            rates = ", ".join(map(str, SAMPLE_RATES))
            raise ValueError(f"sample_rate must be one of {rates}, not {quoted(sample_rate)}")
        super().__init__(
            max_message_bytes=max_message_bytes, ignore_unknown_events=ignore_unknown_events
        )
        self._codec = codec
        self._sample_rate = sample_rate

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def codec(self) -> str:
        return self._codec

    def _begin(self, message: dict[str, Any]) -> list[Event]:
        return self._start(
            StreamStarted(
                call_id=optional(message, "call_id", str, ""),
                stream_id=optional(message, "stream_id", str, ""),
                sample_rate=self._sample_rate,
                codec=self._codec,
                channels=1,
                metadata={
                    "parameters": optional(message, "parameters", dict, {}),
                    "message": message,
                },
            )
        )

    def _implicit_start(self) -> list[Event]:
        return [] if self.started else self._begin({})

    def _receive_binary(self, data: bytes) -> list[Event]:
        return self._implicit_start() + self._audio(data)

    def _receive_event(self, event: str, message: dict[str, Any]) -> list[Event]:
        if event == "start":
            return self._begin(message)
        events = self._implicit_start()
        match event:
            case "dtmf":
                return events + self._dtmf(require(message, "digit", str))
            case "mark":
                return events + self._mark(require(message, "name", str))
            case "stop":
                return [*events, StreamStopped(optional(message, "reason", str, "stop"))]
        return events + self._unknown(event)

    def send_audio(self, payload: bytes) -> bytes:
        self._outgoing_stream()
        return bytes(payload)

    def send_mark(self, name: str) -> str:
        self._outgoing_stream()
        return dumps({"event": "mark", "name": name})

    def send_clear(self) -> str:
        self._outgoing_stream()
        return _CLEAR
