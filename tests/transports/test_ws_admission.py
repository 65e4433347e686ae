"""Admission on the media port: a draining server takes no new call while its live calls go
on, and a server whose measured load leaves no headroom says so on /ready and refuses new
calls until the load is gone."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import websockets
from carrier_messages import twilio_media, twilio_start
from helpers import http_get, metric_samples, wait_until
from processors import Gate
from websockets.exceptions import ConnectionClosed, InvalidStatus

from flowcat_ft import InputAudioRawFrame, Pipeline
from flowcat_ft.agents.echo import Echo
from flowcat_ft.loops import EventLoopThread
from flowcat_ft.transports.load import Headroom, LoadBounds, LoadMonitor


def get(port: int, path: str) -> tuple[int, str]:
    return http_get(f"http://127.0.0.1:{port}{path}")


BOUNDS = LoadBounds(max_loop_lag=0.1, max_queue_delay=0.1, trip_after=0.3, recover_after=0.5)


async def echoed(ws, frames: int, first: int = 0) -> int:
    """Send ``frames`` media messages and count the echoes that come back."""
    for i in range(first, first + frames):
        await ws.send(twilio_media(b"\x44" * 160, i))
    for _ in range(frames):
        await asyncio.wait_for(ws.recv(), 10)
    return frames


def test_a_draining_server_refuses_new_calls_and_lets_live_ones_finish(serve):
    opened = threading.Event()

    async def idle(ws) -> None:
        opened.set()
        await ws.wait_closed()

    server = serve(sockets={"/link": idle})
    url = f"ws://127.0.0.1:{server.port}"

    async def scenario() -> None:
        async with websockets.connect(f"{url}/twilio") as live:
            await live.send(twilio_start())
            assert await echoed(live, 5) == 5
            server.drain()
            assert server.draining
            assert await asyncio.to_thread(get, server.port, "/ready") == (
                503,
                "not ready: draining\n",
            )
            assert await asyncio.to_thread(get, server.port, "/health") == (200, "ok\n")
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(f"{url}/twilio")
            assert refused.value.response.status_code == 503
            assert b"draining" in refused.value.response.body
            # An endpoint that is not a call (a companion's link, say) still connects.
            async with websockets.connect(f"{url}/link"):
                assert await asyncio.to_thread(opened.wait, 5)
            assert await echoed(live, 5, first=5) == 5  # the live call goes on
            assert not await asyncio.to_thread(server.wait_for_calls, 0)

    asyncio.run(scenario())
    assert server.wait_for_calls(10)
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
    samples = metric_samples(get(server.port, "/metrics")[1])
    assert samples["flowcat_draining"] == "1"
    assert samples["flowcat_ready"] == "0"
    assert samples['flowcat_calls_refused_total{reason="draining"}'] == "1"
    assert samples['flowcat_connections_closed_total{code="1000"}'] == "1"


class AudioGate(Gate):
    """Holds its stage thread on the caller's audio until the test opens it."""

    opened = threading.Event()
    entered = threading.Event()

    def process(self, frame, direction):
        if type(frame) is InputAudioRawFrame:
            super().process(frame, direction)
        else:
            self.push(frame, direction)


def test_a_stalled_stage_takes_the_server_out_of_rotation_until_it_recovers(serve):
    AudioGate.opened.clear()
    AudioGate.entered.clear()
    server = serve(Pipeline([AudioGate, Echo]), load=BOUNDS)
    url = f"ws://127.0.0.1:{server.port}/twilio"

    async def scenario() -> tuple[int | None, str, int]:
        async with websockets.connect(url) as live:
            await live.send(twilio_start())
            await live.send(twilio_media(b"\x44" * 160, 0))
            assert await asyncio.to_thread(AudioGate.entered.wait, 5)
            for i in range(1, 10):  # held up behind the first: they wait in the stage's queue
                await live.send(twilio_media(b"\x44" * 160, i))
            ready = lambda: get(server.port, "/ready")  # noqa: E731
            assert await asyncio.to_thread(wait_until, lambda: ready()[0] == 503, 30)
            status = ready()[1]
            refused = await websockets.connect(url)
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(refused.recv(), 10)
            AudioGate.opened.set()
            for _ in range(10):  # the live call was held up, not dropped
                await asyncio.wait_for(live.recv(), 10)
            assert await asyncio.to_thread(wait_until, lambda: ready()[0] == 200, 30)
            return refused.close_code, status, refused.close_reason

    code, status, reason = asyncio.run(scenario())
    assert code == 1013 and "overloaded" in reason
    assert status.startswith("not ready: overloaded (") and "stage queue delay" in status
    assert server.refusals["overloaded"] == 1
    samples = metric_samples(get(server.port, "/metrics")[1])
    assert samples['flowcat_calls_refused_total{reason="overloaded"}'] == "1"
    assert samples["flowcat_overloaded"] == "0"
    assert 0 <= float(samples["flowcat_headroom_ratio"]) <= 1


def test_a_blocked_event_loop_is_measured_while_it_is_blocked(runtime):
    io = EventLoopThread("blocked")
    monitor = LoadMonitor(BOUNDS, [io], runtime).start()
    release = threading.Event()
    try:
        io.loop.call_soon_threadsafe(release.wait, 30)  # the loop runs nothing else meanwhile
        assert wait_until(lambda: monitor.headroom.overloaded, 30)
        assert monitor.headroom.loop_lag >= BOUNDS.max_loop_lag
        release.set()
        assert wait_until(lambda: not monitor.headroom.overloaded, 30)
        assert monitor.snapshot()["overloaded"] is False
    finally:
        release.set()
        monitor.stop()
        io.stop()


# -- the verdict, with a made-up clock ----------------------------------------------------


def test_one_slow_sample_does_not_trip_it():
    headroom = Headroom(BOUNDS)
    assert not headroom.observe(0.0, loop_lag=0.5, queue_delay=0.0)
    assert headroom.pressure == pytest.approx(5.0) and headroom.ratio == 0.0
    assert not headroom.observe(0.25, loop_lag=0.01, queue_delay=0.0)
    assert not headroom.observe(0.5, loop_lag=0.5, queue_delay=0.0)  # a new run begins
    assert headroom.observe(0.8, loop_lag=0.0, queue_delay=0.2)  # over for 0.3 s: tripped


def test_it_recovers_only_once_well_under_for_long_enough():
    headroom = Headroom(BOUNDS)
    headroom.observe(0.0, 0.2, 0.0)
    assert headroom.observe(0.3, 0.2, 0.0)
    assert headroom.observe(0.5, 0.08, 0.0)  # under the bound, not under half of it
    assert headroom.observe(0.7, 0.04, 0.0)  # well under: the wait begins
    assert headroom.observe(1.1, 0.04, 0.0)
    assert headroom.observe(1.15, 0.06, 0.0)  # not well under: the wait starts over
    assert headroom.observe(1.2, 0.0, 0.0)
    assert not headroom.observe(1.7, 0.0, 0.03)  # well under for 0.5 s
    assert headroom.ratio == pytest.approx(0.7)


def test_a_bound_of_none_is_not_measured():
    headroom = Headroom(LoadBounds(max_loop_lag=None, max_queue_delay=0.1, trip_after=0))
    assert not headroom.observe(0.0, loop_lag=100.0, queue_delay=0.0)
    assert headroom.observe(0.1, loop_lag=0.0, queue_delay=0.1)
