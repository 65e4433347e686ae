"""Graceful drain of a real `flowcat-ft serve` process, with real signals and real calls:
SIGTERM takes it out of rotation at once and refuses new calls, live calls go on to their
end, then it exits 0; a second SIGTERM, or the end of the grace, ends what is left;
`flowcat-ft drain` (a preStop hook) starts the drain without stopping the server; under
load, every caller sees a normal close."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess

import pytest
import websockets
from carrier_messages import twilio_media, twilio_start
from fleet import FLOWCAT, Served
from helpers import metric_samples, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus


@pytest.fixture
def served(tmp_path):
    started: list[Served] = []

    def start(limits: str = "shutdown_grace: 60") -> Served:
        started.append(server := Served(tmp_path, limits))
        return server

    yield start
    for server in started:
        server.close()


async def echo(ws, frames: int, first: int = 0) -> None:
    """Send ``frames`` media messages and wait for every echo."""
    for i in range(first, first + frames):
        await ws.send(twilio_media(b"\x44" * 160, i))
    for _ in range(frames):
        await asyncio.wait_for(ws.recv(), 10)


async def until(predicate, timeout: float = 30) -> bool:
    return await asyncio.to_thread(wait_until, predicate, timeout)


async def closed(ws) -> tuple[int | None, str | None]:
    """Wait for the server to close ``ws``; its close code and reason."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 30)
    return ws.close_code, ws.close_reason


def test_sigterm_refuses_new_calls_lets_the_live_one_finish_then_exits_0(served):
    server = served()

    async def scenario() -> None:
        async with websockets.connect(server.url()) as live:
            await live.send(twilio_start())
            await echo(live, 5)
            server.proc.send_signal(signal.SIGTERM)
            assert await until(lambda: server.get("/ready") == (503, "not ready: draining\n"))
            assert server.get("/health") == (200, "ok\n")  # a liveness probe keeps passing
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(server.url())
            assert refused.value.response.status_code == 503
            await echo(live, 20, first=5)  # the live call goes on
            assert server.proc.poll() is None
            samples = metric_samples(server.get("/metrics")[1])
            assert samples["flowcat_draining"] == "1" and samples["flowcat_calls_active"] == "1"
        # The caller hangs up: the last call has ended.

    asyncio.run(scenario())
    assert server.proc.wait(30) == 0
    output = server.output()
    assert "draining: no new calls, 1 live, given up to 60 s to finish" in output
    assert "stopped: every call had ended" in output


def test_a_second_sigterm_ends_the_live_calls(served):
    server = served()

    async def scenario() -> tuple[int | None, str | None]:
        async with websockets.connect(server.url()) as live:
            await live.send(twilio_start())
            await echo(live, 3)
            server.proc.send_signal(signal.SIGTERM)
            assert await until(lambda: server.get("/ready")[0] == 503)
            await echo(live, 3, first=3)
            server.proc.send_signal(signal.SIGTERM)
            return await closed(live)

    assert asyncio.run(scenario()) == (1001, "the server is shutting down")
    assert server.proc.wait(30) == 0
    assert "stopped: ended the calls still live: 1" in server.output()


def test_the_end_of_the_grace_ends_the_live_calls(served):
    server = served("shutdown_grace: 0.5")

    async def scenario() -> tuple[int | None, str | None]:
        async with websockets.connect(server.url()) as live:
            await live.send(twilio_start())
            await echo(live, 3)
            server.proc.send_signal(signal.SIGTERM)
            return await closed(live)

    assert asyncio.run(scenario()) == (1001, "the server is shutting down")
    assert server.proc.wait(30) == 0
    assert "stopped: ended the calls still live: 1" in server.output()


def test_the_drain_command_takes_a_server_out_of_rotation_and_leaves_it_up(served):
    server = served()

    async def scenario() -> None:
        async with websockets.connect(server.url()) as live:
            await live.send(twilio_start())
            await echo(live, 3)
            drain = await asyncio.to_thread(
                subprocess.run,
                [*FLOWCAT, "drain", "--pid", str(server.proc.pid), "--port", str(server.port)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert drain.returncode == 0, drain.stderr
            assert "draining; waiting 0 s" in drain.stdout
            assert server.get("/ready") == (503, "not ready: draining\n")
            await echo(live, 10, first=3)

    asyncio.run(scenario())
    assert wait_until(
        lambda: metric_samples(server.get("/metrics")[1])["flowcat_calls_active"] == "0"
    )
    assert server.get("/health") == (200, "ok\n")
    assert server.proc.poll() is None  # drained, and still up until told to stop
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    output = server.output()
    assert "draining: no new calls, 1 live; SIGTERM to stop" in output
    assert "stopped: every call had ended" in output


def test_the_drain_command_says_when_there_is_no_such_server():
    result = subprocess.run(
        [*FLOWCAT, "drain", "--pid", "999999999"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "cannot signal process 999999999" in result.stderr


def test_sigterm_with_calls_streaming_ends_each_cleanly_and_exits_0(served):
    """SIGTERM under load, through the CLI: six callers streaming when it comes. At the end
    of the grace each sees a normal close (1001, never 1011), the process exits 0, and it
    logs no error or traceback."""
    server = served("shutdown_grace: 1")
    echoed = [0] * 6

    async def stream_until_closed(ws, n: int) -> tuple[int | None, str | None]:
        async def send() -> None:
            with contextlib.suppress(ConnectionClosed):
                for i in itertools.count(3):
                    await ws.send(twilio_media(b"\x44" * 160, i))
                    await asyncio.sleep(0.02)

        sender = asyncio.create_task(send())
        try:
            async for _ in ws:  # ends at a normal close; raises at an abnormal one
                echoed[n] += 1
        finally:
            sender.cancel()
        return ws.close_code, ws.close_reason

    async def scenario() -> list[tuple[int | None, str | None]]:
        callers = [await websockets.connect(server.url()) for _ in echoed]
        for n, ws in enumerate(callers):
            await ws.send(twilio_start(call=f"CA{n}"))
            await echo(ws, 3)
        streams = [asyncio.create_task(stream_until_closed(ws, n)) for n, ws in enumerate(callers)]
        assert await until(lambda: min(echoed) >= 5)  # every call mid-stream
        server.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(asyncio.gather(*streams), 60)

    assert asyncio.run(scenario()) == [(1001, "the server is shutting down")] * len(echoed)
    assert server.proc.wait(30) == 0
    output = server.output()
    assert f"stopped: ended the calls still live: {len(echoed)}" in output
    assert "Traceback" not in output and "ERROR" not in output, output
