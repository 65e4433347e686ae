"""200 concurrent calls on one server, each streaming a second of audio at real time:
every frame of every call comes back."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from helpers import wait_until

from flowcat_ft.agents.echo import echo_pipeline

# Real-time and CPU-heavy: ci/test.sh runs the tests of this group one at a time.
pytestmark = pytest.mark.xdist_group("realtime")

CALLS = 200
FRAMES = 50  # one second at 50 frames/s


async def one_call(port: int, n: int, start_at: float) -> list[bytes]:
    url = f"ws://127.0.0.1:{port}/raw?codec=mulaw&sample_rate=8000"
    async with websockets.connect(url, open_timeout=30) as ws:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        got: list[bytes] = []

        async def read() -> None:
            while len(got) < FRAMES:
                got.append(await ws.recv())

        reader = asyncio.create_task(read())
        for i in range(FRAMES):  # paced by an absolute clock, as a carrier sends
            await asyncio.sleep(max(0.0, start_at + i * 0.02 - time.monotonic()))
            await ws.send(bytes([n % 100 + 1, i % 100 + 1]) * 80)
        await asyncio.wait_for(reader, 30)
        return got


def test_200_concurrent_calls_lose_nothing(serve):
    server = serve(echo_pipeline(7), slabs=4096)

    async def main() -> list[list[bytes]]:
        start_at = time.monotonic() + 2.0
        return await asyncio.gather(*(one_call(server.port, n, start_at) for n in range(CALLS)))

    results = asyncio.run(main())
    assert len(results) == CALLS
    for n, got in enumerate(results):
        assert got == [bytes([n % 100 + 1, i % 100 + 1]) * 80 for i in range(FRAMES)]
    assert wait_until(lambda: server.runtime.pool.in_use == 0, 10)
    shards = server.runtime.metrics()["pipelines"]
    frames = [stage["frames"] for shard in shards for stage in shard["stages"]]
    assert sum(frames) >= CALLS * FRAMES
    assert len(shards) == 2 and all(n > CALLS * FRAMES / 4 for n in frames)  # both cores
