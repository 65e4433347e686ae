"""Audio in comes out: real websockets clients through the echo agent, per protocol."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import websockets
from carrier_messages import receive_until_quiet, twilio_media, twilio_start
from helpers import wait_until

from flowcat_ft import FrameProcessor, Pipeline


def test_twilio_audio_comes_back_bit_exact_with_the_stream_sid(serve):
    server = serve()
    frames = [bytes([(i * 7 + k) % 256 for k in range(160)]) for i in range(25)]

    async def call() -> list[dict]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            )
            await ws.send(twilio_start())
            for i, payload in enumerate(frames):
                await ws.send(twilio_media(payload, i))
                await asyncio.sleep(0.02)
            return [json.loads(m) for m in await receive_until_quiet(ws)]

    messages = asyncio.run(call())
    media = [m for m in messages if m["event"] == "media"]
    assert all(m["streamSid"] == "MZ1" for m in media)
    echoed = [base64.b64decode(m["media"]["payload"]) for m in media]
    # µ-law 0x7F and 0xFF both mean zero: the round trip through PCM picks 0xFF.
    expected = [p.replace(b"\x7f", b"\xff") for p in frames]
    assert echoed == expected
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_raw_pcm16_audio_comes_back(serve):
    server = serve()
    tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000).astype("<i2")
    chunks = [tone[i : i + 320].tobytes() for i in range(0, 16000, 320)]

    async def call() -> list[bytes]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/raw") as ws:
            for chunk in chunks:
                await ws.send(chunk)
                await asyncio.sleep(0.02)
            return await receive_until_quiet(ws)

    got = asyncio.run(call())
    assert all(isinstance(m, bytes) and len(m) == 640 for m in got)  # 20 ms at 16 kHz
    assert b"".join(got) == b"".join(chunks)


def test_raw_mulaw_at_8k_by_query_parameters(serve):
    server = serve()
    payload = bytes(range(0, 160))

    async def call() -> list[bytes]:
        url = f"ws://127.0.0.1:{server.port}/raw?codec=mulaw&sample_rate=8000"
        async with websockets.connect(url) as ws:
            for _ in range(5):
                await ws.send(payload)
            return await receive_until_quiet(ws)

    got = asyncio.run(call())
    assert got == [payload.replace(b"\x7f", b"\xff")] * 5


def test_the_callers_own_audio_is_never_played_back_to_them(serve):
    """A pipeline that lets the caller's audio reach its end (an STT that passes it on, say)
    does not send it back: only the agent's output audio goes to the carrier."""
    server = serve(Pipeline([FrameProcessor]))  # every frame passes through, untouched
    tone = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000) * 8000).astype("<i2")

    async def call() -> list[bytes]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/raw") as ws:
            for start in range(0, len(tone), 320):
                await ws.send(tone[start : start + 320].tobytes())
                await asyncio.sleep(0.02)
            return await receive_until_quiet(ws)

    assert asyncio.run(call()) == []
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
