"""Asterisk's AudioSocket protocol, Sans-I/O: bytes of the TCP stream in, events out.

Asterisk's ``AudioSocket(uuid,host:port)`` dialplan application (and the ``chan_audiosocket``
channel) connects to the application over TCP and sends messages of three parts: a
type byte, a 16-bit big-endian payload length, the payload. The types:

- ``0x00`` hangup (no payload): the call is over;
- ``0x01`` the call's UUID (16 bytes), the first message;
- ``0x03`` DTMF: one ASCII digit;
- ``0x10`` audio: signed linear 16-bit little-endian, 8 kHz mono (320 bytes per 20 ms);
- ``0xff`` an error, with an optional error code byte.

The application answers with audio messages (same format) and a hangup to end the call.
:meth:`AudioSocketParser.feed` returns the serializers' events
(:mod:`flowcat_ft.serializers`): :class:`StreamStarted` for the UUID, :class:`AudioIn`,
:class:`DtmfIn`, :class:`StreamStopped` (hangup, or an error from Asterisk); a stream
that breaks the protocol raises :class:`AudioSocketError` naming the problem.
"""

from __future__ import annotations

import struct
import uuid

from flowcat_ft.serializers import (
    DTMF_DIGITS,
    AudioIn,
    DtmfIn,
    Event,
    StreamStarted,
    StreamStopped,
)

__all__ = [
    "AUDIO",
    "DTMF",
    "ERROR",
    "HANGUP",
    "SAMPLE_RATE",
    "UUID",
    "AudioSocketError",
    "AudioSocketParser",
    "message",
]

HANGUP, UUID, DTMF, AUDIO, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
SAMPLE_RATE = 8000
MAX_AUDIO_BYTES = 4096  # far above Asterisk's 20 ms (320 bytes)

_HEADER = struct.Struct("!BH")


class AudioSocketError(ValueError):
    """The peer broke the AudioSocket protocol: close the connection."""


def message(kind: int, payload: bytes = b"") -> bytes:
    """One message: type, length, payload."""
    return _HEADER.pack(kind, len(payload)) + payload


class AudioSocketParser:
    """Cuts a TCP stream into AudioSocket messages, and them into events."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.started = False

    def feed(self, data: bytes) -> list[Event]:
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        while len(buffer) >= 3:
            kind, length = _HEADER.unpack_from(buffer)
            if kind == AUDIO and length > MAX_AUDIO_BYTES:
                raise AudioSocketError(f"a {length}-byte audio message is too long")
            if len(buffer) < 3 + length:
                break
            payload = bytes(buffer[3 : 3 + length])
            del buffer[: 3 + length]
            events += self._event(kind, payload)
        return events

    def _event(self, kind: int, payload: bytes) -> list[Event]:
        if kind == UUID:
            if self.started:
                raise AudioSocketError("a second UUID message")
            if len(payload) != 16:
                raise AudioSocketError(f"a UUID of {len(payload)} bytes, not 16")
            self.started = True
            call_id = str(uuid.UUID(bytes=payload))
            return [StreamStarted(call_id, call_id, SAMPLE_RATE, "pcm16", 1, {})]
        if not self.started and kind in (AUDIO, DTMF):
            raise AudioSocketError(f"message type 0x{kind:02x} before the UUID")
        if kind == AUDIO:
            if len(payload) % 2:
                raise AudioSocketError(f"{len(payload)} bytes of audio are not whole samples")
            return [AudioIn(payload)] if payload else []
        if kind == DTMF:
            digit = payload.decode("ascii", "replace")
            if digit not in DTMF_DIGITS:
                raise AudioSocketError(f"{digit!r} is not a DTMF digit")
            return [DtmfIn(digit)]
        if kind == HANGUP:
            return [StreamStopped("hangup")]
        if kind == ERROR:
            code = f" (code 0x{payload[0]:02x})" if payload else ""
            return [StreamStopped(f"Asterisk reported an error{code}")]
        raise AudioSocketError(f"unknown message type 0x{kind:02x}")
