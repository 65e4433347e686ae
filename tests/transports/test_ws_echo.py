"""Audio in comes out: real websockets clients through the echo agent, per protocol."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import websockets
from carrier_messages import payloads, receive_until, twilio_media, twilio_start
from helpers import wait_until

from flowcat_ft import FrameProcessor, InputAudioRawFrame, OutputAudioRawFrame, Pipeline


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
            echo = await receive_until(
                ws, lambda got: len(payloads(got)) >= len(frames), "the echo of 25 frames"
            )
            return [json.loads(m) for m in echo]

    messages = asyncio.run(call())
    media = [m for m in messages if m["event"] == "media"]
    assert all(m["streamSid"] == "MZ1" for m in media)
    echoed = [base64.b64decode(m["media"]["payload"]) for m in media]
    # µ-law 0x7F and 0xFF both mean zero: the round trip through PCM picks 0xFF.
    expected = [p.replace(b"\x7f", b"\xff") for p in frames]
    assert echoed == expected
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def bytes_in(messages: list[bytes]) -> int:
    """How many bytes of audio ``messages`` (binary, from a raw stream) hold."""
    return sum(map(len, messages))


def test_raw_pcm16_audio_comes_back(serve):
    server = serve()
    tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000).astype("<i2")
    chunks = [tone[i : i + 320].tobytes() for i in range(0, 16000, 320)]

    async def call() -> list[bytes]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/raw") as ws:
            for chunk in chunks:
                await ws.send(chunk)
                await asyncio.sleep(0.02)
            return await receive_until(ws, lambda got: bytes_in(got) >= 32000, "1 s of echo")

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
            return await receive_until(ws, lambda got: bytes_in(got) >= 800, "5 frames of echo")

    got = asyncio.run(call())
    assert got == [payload.replace(b"\x7f", b"\xff")] * 5


ANSWER = np.full(320, 1234, "<i2").tobytes()


class AnswersAfterTheCaller(FrameProcessor):
    """Passes every frame on, untouched, and answers with 20 ms of its own audio
    (:data:`ANSWER`) once half a second of the caller's has gone by: audio out that
    leaves the pipeline behind all the caller's."""

    def __init__(self) -> None:
        super().__init__()
        self.heard = 0  # samples of the caller's audio

    def process(self, frame, direction):
        heard_before = self.heard
        if type(frame) is InputAudioRawFrame:
            self.heard += frame.num_frames
        self.push(frame, direction)
        if heard_before < 8000 <= self.heard:
            self.push(OutputAudioRawFrame.from_bytes(self.pool, ANSWER, 16000))


def test_the_callers_own_audio_is_never_played_back_to_them(serve):
    """A pipeline that lets the caller's audio reach its end (an STT that passes it on, say)
    does not send it back: only the agent's output audio goes to the carrier."""
    server = serve(Pipeline([AnswersAfterTheCaller]))
    tone = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000) * 8000).astype("<i2")

    async def call() -> list[bytes]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/raw") as ws:
            for start in range(0, len(tone), 320):
                await ws.send(tone[start : start + 320].tobytes())
                await asyncio.sleep(0.02)
            # The answer leaves the pipeline after the caller's audio, and the session
            # sends what leaves in order: had any of the caller's come back, it is here.
            return await receive_until(ws, lambda got: ANSWER in got, "the agent's answer")

    assert asyncio.run(call()) == [ANSWER]
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
