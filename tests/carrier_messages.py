"""Messages as carriers send them, for tests that play the carrier's side."""

from __future__ import annotations

import asyncio
import base64
import json


def twilio_start(stream: str = "MZ1", call: str = "CA1") -> str:
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
                "customParameters": {},
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


async def receive_until_quiet(ws, quiet: float = 0.5) -> list:
    """Everything the server sends until it has been quiet for ``quiet`` seconds."""
    got = []
    try:
        while True:
            got.append(await asyncio.wait_for(ws.recv(), quiet))
    except TimeoutError:
        return got
