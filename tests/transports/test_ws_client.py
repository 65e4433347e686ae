"""The client transport: the agent dials out to a media service and runs a call over it."""

from __future__ import annotations

import asyncio
import threading

import websockets

from flowcat_ft import Runtime
from flowcat_ft.agents.echo import echo_pipeline
from flowcat_ft.serializers import make_serializer
from flowcat_ft.transports.client import WebSocketClient


def test_dialling_out_runs_a_call_over_the_connection():
    received: list[bytes] = []
    ready = threading.Event()
    done = threading.Event()
    port: list[int] = []

    async def media_service(ws) -> None:  # plays audio to the agent, listens to its echo
        for i in range(10):
            await ws.send(bytes([i + 1]) * 640)
            await asyncio.sleep(0.02)
        while len(received) < 10:
            received.append(await ws.recv())
        await ws.close()
        done.set()

    def run_service() -> None:
        async def main() -> None:
            async with websockets.serve(media_service, "127.0.0.1", 0) as server:
                port.append(server.sockets[0].getsockname()[1])
                ready.set()
                await asyncio.get_running_loop().run_in_executor(None, done.wait, 10)

        asyncio.run(main())

    service = threading.Thread(target=run_service)
    service.start()
    assert ready.wait(10)
    with Runtime(threads=2, slabs=256) as runtime:
        client = WebSocketClient(
            runtime, echo_pipeline(), f"ws://127.0.0.1:{port[0]}/", make_serializer("raw")
        ).connect()
        assert client.wait(10)
        client.close()
        assert runtime.calls == []
        assert runtime.pool.in_use == 0
    service.join(10)
    assert received == [bytes([i + 1]) * 640 for i in range(10)]
