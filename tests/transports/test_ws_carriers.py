"""Every carrier's protocol against the real server: a websockets client plays the
carrier's side of a call, and the echo agent's audio comes back in that protocol."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
import websockets
from carrier_messages import (
    exotel_session,
    plivo_session,
    receive_until_quiet,
    telnyx_session,
    twilio_session,
    vonage_session,
)
from helpers import wait_until

ULAW = [bytes((i * 5 + k) % 256 or 1 for k in range(160)) for i in range(25)]  # 20 ms each
PCM_8K = [np.full(800, 1000 * (i + 1), "<i2").tobytes() for i in range(5)]  # 100 ms each
PCM_16K = [np.full(320, 300 * (i + 1), "<i2").tobytes() for i in range(25)]  # 20 ms each


def audio_of(message: str | bytes) -> bytes | None:
    """The audio an outgoing message carries, whichever carrier's shape it has."""
    if isinstance(message, bytes):
        return message  # Vonage: binary L16
    data = json.loads(message)
    media = data.get("media") or {}
    payload = media.get("payload")
    return base64.b64decode(payload) if payload else None


@pytest.mark.parametrize(
    ("carrier", "session", "frames"),
    [
        ("twilio", twilio_session, ULAW),
        ("telnyx", telnyx_session, ULAW),
        ("plivo", plivo_session, ULAW),
        ("exotel", exotel_session, PCM_8K),
        ("vonage", vonage_session, PCM_16K),
    ],
)
def test_each_carrier_gets_its_audio_back(serve, carrier, session, frames):
    server = serve()

    async def call() -> list:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/{carrier}") as ws:
            for message in session(frames):
                await ws.send(message)
                await asyncio.sleep(0.005)
            return await receive_until_quiet(ws, 1.0)

    replies = asyncio.run(call())
    echoed = b"".join(a for a in map(audio_of, replies) if a)
    sent = b"".join(frames)
    if carrier in ("twilio", "telnyx", "plivo"):
        sent = sent.replace(b"\x7f", b"\xff")  # the one µ-law code that does not round-trip
    assert echoed == sent
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
