"""Messages as carriers send them, for tests that play the carrier's side."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import websockets


def twilio_start(stream: str = "MZ1", call: str = "CA1", parameters: dict | None = None) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream,
            "start": {
                "streamSid": stream,
                "accountSid": "AC1",
                "callSid": call,
                "tracks": ["inbound"],
                "customParameters": parameters or {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def twilio_media(payload: bytes, n: int, stream: str = "MZ1") -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(n + 2),
            "streamSid": stream,
            "media": {
                "track": "inbound",
                "chunk": str(n + 1),
                "timestamp": str(n * 20),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def twilio_dtmf(digit: str, n: int = 0, stream: str = "MZ1") -> str:
    return json.dumps(
        {
            "event": "dtmf",
            "sequenceNumber": str(n),
            "streamSid": stream,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


async def receive_until(
    ws, done: Callable[[list], bool], waiting_for: str, timeout: float = 10.0
) -> list:
    """What the server sends, read until ``done(messages read so far)`` is true.

    Fails naming ``waiting_for`` if that takes over ``timeout`` seconds or the connection
    closes first."""
    got: list = []
    try:
        async with asyncio.timeout(timeout):
            while not done(got):
                got.append(await ws.recv())
    except TimeoutError:
        problem = f"waited {timeout:g} s for {waiting_for}"
    except websockets.ConnectionClosed as closed:
        problem = f"the connection closed ({closed}) before {waiting_for}"
    else:
        return got
    last = f", the last {got[-1]!r:.100}" if got else ""
    raise AssertionError(f"{problem}: {len(got)} messages came{last}")


def _audio_of(message: str | bytes) -> bytes | None:
    """The audio an outgoing message carries, whichever carrier's shape it has."""
    if isinstance(message, bytes):
        return message  # Vonage and raw streams: binary audio
    payload = (json.loads(message).get("media") or {}).get("payload")
    return base64.b64decode(payload) if payload else None


def payloads(messages: list) -> list[bytes]:
    """The audio of each message that carries some, in order."""
    return [audio for audio in map(_audio_of, messages) if audio]


# -- every carrier: a start message and a way to wrap audio, as each one sends them --------


def _b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


def telnyx_session(frames: list[bytes]) -> list[str | bytes]:
    stream = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_id": stream,
        "start": {
            "call_control_id": "v3:call",
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
    }
    media = [
        {
            "event": "media",
            "sequence_number": str(i + 2),
            "stream_id": stream,
            "media": {
                "track": "inbound",
                "chunk": str(i + 1),
                "timestamp": str(20 * i),
                "payload": _b64(p),
            },
        }
        for i, p in enumerate(frames)
    ]
    return [json.dumps(m) for m in [{"event": "connected", "version": "1.0.0"}, start, *media]]


def plivo_session(frames: list[bytes]) -> list[str | bytes]:
    stream = "87654321-4321-4321-4321-cba987654321"
    start = {
        "event": "start",
        "sequenceNumber": 1,
        "start": {
            "callId": "12345678-1234-1234-1234-123456789abc",
            "streamId": stream,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
    }
    media = [
        {
            "event": "media",
            "sequenceNumber": i + 2,
            "streamId": stream,
            "media": {"track": "inbound", "timestamp": str(20 * i), "chunk": i, "payload": _b64(p)},
        }
        for i, p in enumerate(frames)
    ]
    return [json.dumps(m) for m in [start, *media]]


def exotel_session(frames: list[bytes]) -> list[str | bytes]:
    stream = "MZa1b2c3d4e5f6a7b8c9d0e1f2a3"
    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_sid": stream,
        "start": {
            "stream_sid": stream,
            "call_sid": "CAexotel",
            "account_sid": "ACexotel",
            "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
        },
    }
    media = [
        {
            "event": "media",
            "sequence_number": str(i + 2),
            "stream_sid": stream,
            "media": {"chunk": str(i), "timestamp": str(100 * i), "payload": _b64(p)},
        }
        for i, p in enumerate(frames)
    ]
    return [json.dumps(m) for m in [{"event": "connected"}, start, *media]]


def vonage_session(frames: list[bytes]) -> list[str | bytes]:
    connected = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000"}
    return [json.dumps(connected), *frames]


def twilio_session(frames: list[bytes]) -> list[str | bytes]:
    return [twilio_start()] + [twilio_media(p, i) for i, p in enumerate(frames)]
