"""Call lifecycle over WebSocket: open starts a call, close or abort cancels it (slabs back),
the agent can end the call, idle connections time out, and capacity is enforced."""

from __future__ import annotations

import asyncio
import json
import socket
import weakref

import pytest
import websockets
from carrier_messages import twilio_media, twilio_start
from helpers import never_collecting_policy, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus

from flowcat_ft import EndFrame, FrameProcessor, InputDTMFFrame, Pipeline, Runtime
from flowcat_ft.agents.echo import Echo, echo_pipeline
from flowcat_ft.loops import running_loops
from flowcat_ft.transports.server import WebSocketServer
from flowcat_ft.transports.session import MediaOptions


async def close_code_of(ws) -> int | None:
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    return ws.close_code


def test_closing_the_connection_cancels_the_call_and_returns_slabs(serve):
    server = serve()

    async def call() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            for i in range(20):
                await ws.send(twilio_media(b"\x33" * 160, i))
            assert wait_until(lambda: len(server.runtime.calls) == 1)

    asyncio.run(call())
    assert wait_until(lambda: server.runtime.calls == [])
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_ended_connections_go_by_reference_counting_closed_or_dropped():
    """A server runs for weeks with automatic collection off: a connection and the
    library's protocol under it must be freed when it ends, however it ends."""
    runtime = Runtime(threads=2, gc_policy=never_collecting_policy())
    server = WebSocketServer(runtime.start(), echo_pipeline(), port=0, loops=2).start()
    protocols: list[weakref.ref] = []

    async def calls() -> None:
        for n in range(12):
            ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/twilio")
            await ws.send(twilio_start(call=f"CA{n}"))
            await ws.send(twilio_media(b"\x33" * 160, 0))
            await ws.recv()  # the echo: the call went through the pipeline
            (session,) = server.sessions
            protocols.append(weakref.ref(session.ws.protocol))
            del session
            if n % 3 == 0:
                await ws.close()
            elif n % 3 == 1:
                ws.transport.close()  # a FIN, no closing handshake (as a load generator)
            else:
                ws.transport.abort()  # a reset
            async with asyncio.timeout(10):  # the transport closes as this loop runs
                while server.sessions:
                    await asyncio.sleep(0.01)

    try:
        asyncio.run(calls())
        assert wait_until(lambda: all(ref() is None for ref in protocols))
        assert wait_until(lambda: runtime.pool.in_use == 0)
    finally:
        server.stop(grace=0)
        runtime.stop()


def test_an_aborted_tcp_connection_cancels_the_call(serve):
    server = serve()

    async def call() -> None:
        ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/twilio")
        await ws.send(twilio_start())
        await ws.send(twilio_media(b"\x33" * 160, 0))
        assert wait_until(lambda: len(server.runtime.calls) == 1)
        ws.transport.abort()  # no closing handshake: the peer just vanished

    asyncio.run(call())
    assert wait_until(lambda: server.runtime.calls == [])
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_a_stop_message_ends_the_connection_normally(serve):
    server = serve()

    async def call() -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            await ws.send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": "5",
                        "streamSid": "MZ1",
                        "stop": {"accountSid": "AC1", "callSid": "CA1"},
                    }
                )
            )
            return await asyncio.wait_for(close_code_of(ws), 5)

    assert asyncio.run(call()) == 1000
    assert wait_until(lambda: server.runtime.calls == [])


class HangUpOnKey(FrameProcessor):
    """The agent ends the call when the caller presses a key."""

    def process(self, frame, direction):
        self.push(frame, direction)
        if isinstance(frame, InputDTMFFrame):
            self.push(EndFrame(), direction.UPSTREAM)  # ask the call to end


def test_the_agent_ending_the_call_closes_the_connection(serve):
    server = serve(Pipeline([HangUpOnKey, Echo]))

    async def call() -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/raw") as ws:
            await ws.send(json.dumps({"event": "dtmf", "digit": "#"}))
            return await asyncio.wait_for(close_code_of(ws), 5)

    assert asyncio.run(call()) == 1000
    assert wait_until(lambda: server.runtime.calls == [])


def test_an_idle_connection_times_out(serve):
    server = serve(options=MediaOptions(idle_timeout=0.3))

    async def call() -> tuple[int | None, str | None]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            return await asyncio.wait_for(close_code_of(ws), 5), ws.close_reason

    assert asyncio.run(call()) == (1001, "idle for 0.3 s")
    assert wait_until(lambda: server.runtime.calls == [])


def test_traffic_keeps_resetting_the_idle_timer(serve):
    """The control case: media for three idle timeouts keeps the call; once it stops, the
    timer runs out."""
    server = serve(options=MediaOptions(idle_timeout=1.0))
    frames = 150  # three seconds of 20 ms frames

    async def call() -> tuple[int, int | None, str | None]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            for i in range(frames):
                await ws.send(twilio_media(b"\x33" * 160, i))
                await asyncio.sleep(0.02)
            echoed = 0
            async for message in ws:  # the echo of every frame, then the idle close
                echoed += json.loads(message).get("event") == "media"
            return echoed, ws.close_code, ws.close_reason

    echoed, code, reason = asyncio.run(call())
    assert (echoed, code, reason) == (frames, 1001, "idle for 1 s")
    assert wait_until(lambda: server.runtime.calls == [])


def test_connections_past_max_calls_are_refused_with_1013(serve):
    server = serve(max_calls=2)

    async def calls() -> list[int | None]:
        url = f"ws://127.0.0.1:{server.port}/twilio"
        first = await websockets.connect(url)
        second = await websockets.connect(url)
        # Both counted (each connection's handler runs on its own loop thread) before:
        assert await asyncio.to_thread(wait_until, lambda: len(server.sessions) == 2)
        third = await websockets.connect(url)
        refused = await asyncio.wait_for(close_code_of(third), 5)
        await first.close()
        await second.close()
        assert wait_until(lambda: server.sessions == [])
        fourth = await websockets.connect(url)  # room again
        open_code = fourth.close_code
        await fourth.close()
        return [refused, open_code]

    assert asyncio.run(calls()) == [1013, None]
    assert server.refused == 1


def test_an_unknown_path_is_refused(serve):
    server = serve()

    async def call() -> tuple[int | None, str]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/nowhere") as ws:
            code = await asyncio.wait_for(close_code_of(ws), 5)
            return code, ws.close_reason

    code, reason = asyncio.run(call())
    assert code == 1008 and "/twilio" in reason


def test_bad_stream_options_are_refused(serve):
    server = serve()

    async def call() -> tuple[int | None, str]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/raw?codec=opus") as ws:
            code = await asyncio.wait_for(close_code_of(ws), 5)
            return code, ws.close_reason

    code, reason = asyncio.run(call())
    assert code == 1008 and "codec" in reason


async def refused_with(port: int) -> int | None:
    """The HTTP status a new call's handshake is refused with (None: it was taken)."""
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/twilio"):
            return None
    except InvalidStatus as refusal:
        return refusal.response.status_code


def test_stopping_lets_calls_go_on_for_the_grace_then_closes_them(serve):
    server = serve()

    async def call() -> tuple[bool, int | None, bool]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            assert wait_until(lambda: len(server.sessions) == 1)
            stopping = asyncio.get_running_loop().run_in_executor(None, server.stop, 3.0)
            assert await asyncio.to_thread(wait_until, lambda: server.draining)
            await ws.send(twilio_media(b"\x55" * 160, 0))  # the call goes on meanwhile...
            echoed = json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "media"
            refused = await refused_with(server.port)  # ...but no new call is taken
            code = await close_code_of(ws)  # until the grace is over
            await stopping
            return echoed, code, refused

    assert asyncio.run(call()) == (True, 1001, 503)
    assert wait_until(lambda: server.runtime.calls == [])
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_a_port_taken_by_a_silent_socket_fails_start_with_oserror_and_stops_the_loops():
    """Bound but not listening: nothing answers the server's check, and bind() refuses."""
    with socket.socket() as taken, Runtime(threads=1) as runtime:
        taken.bind(("127.0.0.1", 0))
        before = set(running_loops())
        server = WebSocketServer(runtime, echo_pipeline(), port=taken.getsockname()[1], loops=2)

        with pytest.raises(OSError):
            server.start()

        assert set(running_loops()) == before
        assert server.loops == []
