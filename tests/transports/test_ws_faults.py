"""Faults on a running server touch only their own call.

While healthy calls stream a few seconds of audio each, other connections fail every way
a long-running server sees: a peer that vanishes without a FIN (silent, its socket left
open), one that drops the TCP connection mid-call, malformed messages, a flood, a call
whose processor raises, a peer that stops reading. Each faulty call ends with the close
code that says why; every healthy call gets every frame back; afterwards the server has
no call, every slab is back, and the faults left no reference cycle of the project's
objects for the collector. A burst that exhausts the slab pool drops frames (counted) and
the calls go on once the pool recovers.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Awaitable

import websockets
from carrier_messages import twilio_media, twilio_start
from helpers import cycles_of_ours, wait_until
from websockets.exceptions import ConnectionClosed

from flowcat_ft import InputDTMFFrame, OutputAudioRawFrame, Pipeline
from flowcat_ft.agents.echo import Echo
from flowcat_ft.frames import InputAudioRawFrame
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.transports.session import MediaOptions

RAW = "/raw?codec=mulaw&sample_rate=8000"
HEALTHY = 4
FRAMES = 150  # three seconds at 50 frames/s
BOOM = 0xEE  # a payload starting with this byte makes the processor raise


class RaisesOnBoom(FrameProcessor):
    def process(self, frame, direction):
        if type(frame) is InputAudioRawFrame and frame.samples[0] == BOOM:
            raise ValueError("boom: a processor failing mid-call")
        self.push(frame, direction)


class Firehose(FrameProcessor):
    """On any key: 2,000 frames of 16 kHz audio at once, far more than sockets buffer."""

    def process(self, frame, direction):
        if isinstance(frame, InputDTMFFrame):
            for _ in range(2000):
                self.push(OutputAudioRawFrame.from_bytes(self.pool, b"\x01\x02" * 1920, 16000))
        self.push(frame, direction)


async def healthy_call(port: int, n: int, start_at: float) -> list[bytes]:
    """Stream FRAMES frames at real time; return the echoes."""
    async with websockets.connect(f"ws://127.0.0.1:{port}{RAW}", open_timeout=30) as ws:
        got: list[bytes] = []

        async def read() -> None:
            while len(got) < FRAMES:
                got.append(await ws.recv())

        reader = asyncio.create_task(read())
        for i in range(FRAMES):
            await asyncio.sleep(max(0.0, start_at + i * 0.02 - time.monotonic()))
            await ws.send(bytes([n + 1, i % 100 + 1]) * 80)
        await asyncio.wait_for(reader, 30)
        return got


async def close_of(ws) -> tuple[int | None, str]:
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason


async def vanishes_without_fin(port: int) -> None:
    """Starts, sends a little, then is never heard of again; its socket stays open, as
    when the network between drops everything (the idle timeout ends it)."""
    ws = await websockets.connect(f"ws://127.0.0.1:{port}{RAW}", ping_interval=None)
    for _ in range(5):
        await ws.send(b"\x22" * 160)
    await asyncio.sleep(4)  # the server's idle timeout is 1 s
    ws.transport.abort()


async def drops_the_connection(port: int) -> None:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/twilio")
    await ws.send(twilio_start("MZ-drop", "CA-drop"))
    for i in range(20):
        await ws.send(twilio_media(b"\x33" * 160, i, "MZ-drop"))
    ws.transport.abort()  # no closing handshake: the peer just went


async def sends_garbage(port: int) -> tuple[int | None, str]:
    async with websockets.connect(f"ws://127.0.0.1:{port}/twilio") as ws:
        await ws.send(twilio_start("MZ-bad", "CA-bad"))
        await ws.send(twilio_media(b"\x33" * 160, 0, "MZ-bad"))
        await ws.send('{"event": "media", "media": {"payload": "not base64!"')
        return await close_of(ws)


async def floods(port: int) -> tuple[int | None, str]:
    async with websockets.connect(f"ws://127.0.0.1:{port}{RAW}") as ws:
        for _ in range(400):  # far past the burst a paced client sends
            await ws.send(b"\x44" * 160)
        return await close_of(ws)


async def makes_a_processor_raise(port: int) -> tuple[int | None, str]:
    async with websockets.connect(f"ws://127.0.0.1:{port}{RAW}") as ws:
        for _ in range(10):
            await ws.send(b"\x55" * 160)
        await ws.send(bytes([BOOM]) * 160)
        return await close_of(ws)


async def stops_reading(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    async with websockets.connect(f"ws://127.0.0.1:{port}/raw", sock=sock, max_queue=1) as ws:
        await ws.send(json.dumps({"event": "dtmf", "digit": "1"}))
        await asyncio.sleep(4)  # not reading


def test_faults_end_only_their_own_calls(serve):
    options = MediaOptions(
        decode_input=False, pace_output=False, idle_timeout=1.0, max_unsent_bytes=64 * 1024
    )
    server = serve(Pipeline([Firehose, RaisesOnBoom, Echo]), slabs=8192, options=options)
    policy = server.runtime.gc
    policy.threshold, policy.idle_after = 1 << 62, math.inf  # collect nothing: cycles stay
    port = server.port

    async def main():
        start_at = time.monotonic() + 1.0
        healthy = [healthy_call(port, n, start_at) for n in range(HEALTHY)]
        faults = [
            vanishes_without_fin(port),
            drops_the_connection(port),
            sends_garbage(port),
            floods(port),
            makes_a_processor_raise(port),
            stops_reading(port),
        ]
        return await asyncio.gather(*healthy, *faults)

    results = asyncio.run(main())
    echoes, (_, _, garbage, flood, raised, _) = results[:HEALTHY], results[HEALTHY:]
    for n, got in enumerate(echoes):
        assert got == [bytes([n + 1, i % 100 + 1]) * 80 for i in range(FRAMES)]
    assert garbage[0] == 1007 and "malformed JSON" in garbage[1]
    assert flood[0] == 1008 and "flood" in flood[1]
    assert raised == (1011, "the agent failed")  # no Python error text to the peer
    codes = server.close_codes
    assert wait_until(lambda: codes[1001] == 1 and codes[1008] >= 2 and codes[1006] >= 1, 10)
    assert wait_until(lambda: server.runtime.calls == [], 10)
    assert wait_until(lambda: server.runtime.pool.in_use == 0, 10)

    assert cycles_of_ours() == []


class Hoarder(FrameProcessor):
    """Keeps every audio frame of its call (and its slab) until the caller presses a key:
    a burst that takes the whole pool. The key, a system frame, may overtake burst frames
    still queued; those are dropped (their slabs go back), neither kept, which would hold
    their slabs for ever, nor echoed to a caller that reads nothing: its closing handshake
    would wait behind them, and time out."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[InputAudioRawFrame] | None = []

    def process(self, frame, direction):
        if isinstance(frame, InputDTMFFrame):
            self.kept = None
        elif type(frame) is InputAudioRawFrame and frame.samples[0] == 0x66:
            if self.kept is not None:
                self.kept.append(frame)
            return
        self.push(frame, direction)


def test_a_burst_that_exhausts_the_pool_drops_frames_and_calls_go_on(serve):
    options = MediaOptions(decode_input=False, pace_output=False, flood_burst=1000)
    server = serve(Pipeline([Hoarder, Echo]), slabs=64, options=options)
    pool = server.runtime.pool

    def wait_for(predicate) -> Awaitable[bool]:
        return asyncio.to_thread(wait_until, predicate, 10)

    async def main() -> int:
        url = f"ws://127.0.0.1:{server.port}{RAW}"
        async with websockets.connect(url) as healthy, websockets.connect(url) as burst:
            await healthy.send(b"\x11" * 160)
            await healthy.recv()
            assert await wait_for(lambda: len(server.sessions) == 2 and pool.in_use == 0)
            by_peer = {session.ws.remote_address: session for session in server.sessions}
            caller, hoarding = by_peer[healthy.local_address], by_peer[burst.local_address]
            for _ in range(200):  # more frames than the pool has slabs, all kept
                await burst.send(b"\x66" * 160)
            assert await wait_for(lambda: hoarding.frames_in == 200 and pool.available == 0)
            assert pool.drops > 0  # burst frames found no slab
            await healthy.send(b"\x11" * 160)  # no slab for it: dropped, and counted
            assert await wait_for(lambda: caller.dropped_in == 1)
            await burst.send(json.dumps({"event": "dtmf", "digit": "1"}))  # lets go
            assert await wait_for(lambda: pool.in_use == 0)
            for _ in range(5):
                await healthy.send(b"\x11" * 160)
            echoed = [await asyncio.wait_for(healthy.recv(), 10) for _ in range(5)]
        # Both closing handshakes completed (1006: one timed out, its peer not answering).
        assert (healthy.close_code, burst.close_code) == (1000, 1000)
        return len(echoed)

    assert asyncio.run(main()) == 5  # the call goes on once the pool has recovered
    assert wait_until(lambda: server.runtime.calls == [] and pool.in_use == 0, 10)
