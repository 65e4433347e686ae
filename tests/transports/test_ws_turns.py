"""The transport measures each turn's response latency: end of user speech to bot audio."""

from __future__ import annotations

import asyncio

import websockets
from carrier_messages import payloads, receive_until, twilio_media, twilio_start
from helpers import wait_until
from processors import TurnEveryFiveFrames

from flowcat_ft.pipeline import Pipeline


def test_each_answered_turn_is_logged_once(serve):
    server = serve(Pipeline([TurnEveryFiveFrames]))

    async def call() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            for n in range(10):
                await ws.send(twilio_media(b"\xff" * 160, n))
            await receive_until(ws, lambda got: len(payloads(got)) >= 10, "10 frames of echo")
            assert wait_until(lambda: len(server.sessions[0].turns) == 2)

    asyncio.run(call())
    turns = server.turns.recent()
    assert len(turns) == 2
    assert all(turn.latency_ms >= 0 for turn in turns)
    assert turns[0].at <= turns[1].at
