"""MediaConnection: whole messages straight to the session's callback, in order, those that
came before the callback first, fragmented ones assembled; control frames still answered."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from flowcat_ft.transports.connection import MediaClientConnection, MediaConnection


async def echo_server(ready: asyncio.Event | None = None):
    """A server whose handler takes messages through the callback, once *ready* is set,
    and sends back what it got, one message each."""

    async def handler(ws: MediaConnection) -> None:
        if ready is not None:
            await ready.wait()  # messages arrive meanwhile, and are held
        ws.take_messages(lambda message: asyncio.ensure_future(ws.send(message)))
        await ws.wait_closed()

    async def hold(connection: MediaConnection, request) -> None:
        connection.hold_messages()  # as WebSocketServer does for a media route

    return await serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=MediaConnection,
        process_request=hold,
        compression=None,
    )


def test_messages_held_before_the_callback_come_first_and_in_order():
    async def scenario() -> list:
        ready = asyncio.Event()
        server = await echo_server(ready)
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            for n in range(5):
                await ws.send(f"text {n}")
                await ws.send(bytes([n]) * 3)
            await asyncio.sleep(0.1)  # all of them reach the server before the callback
            ready.set()
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(10)]
        server.close()
        return got

    got = asyncio.run(scenario())
    assert got == [m for n in range(5) for m in (f"text {n}", bytes([n]) * 3)]


def test_fragmented_messages_are_assembled_and_pings_answered():
    async def scenario() -> tuple:
        server = await echo_server()
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            await ws.send(["caf", "é ", "au lait"])  # one text message in three frames
            await ws.send([b"\x00\x01", b"\x02"])
            latency = await asyncio.wait_for(await ws.ping(), 5)
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)]
        server.close()
        return got, latency

    got, latency = asyncio.run(scenario())
    assert got == ["café au lait", b"\x00\x01\x02"]
    assert latency >= 0


def test_a_client_connection_holds_what_the_server_sends_first():
    async def scenario() -> list:
        async def greet(ws) -> None:
            for n in range(3):
                await ws.send(f"hello {n}")
            await ws.wait_closed()

        server = await serve(greet, "127.0.0.1", 0, compression=None)
        port = server.sockets[0].getsockname()[1]
        got: list = []
        async with connect(f"ws://127.0.0.1:{port}", create_connection=MediaClientConnection) as ws:
            await asyncio.sleep(0.1)  # the greetings arrive before anyone takes them
            ws.take_messages(got.append)
            for _ in range(50):
                if len(got) == 3:
                    break
                await asyncio.sleep(0.01)
        server.close()
        return got

    assert asyncio.run(scenario()) == ["hello 0", "hello 1", "hello 2"]
