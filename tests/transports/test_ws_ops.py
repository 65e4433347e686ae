"""Operations endpoints on the media port: health, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import websockets
from carrier_messages import twilio_media, twilio_start
from helpers import wait_until

from flowcat_ft.transports.ops import prometheus_text


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_health_and_readiness_follow_capacity(serve):
    server = serve(max_calls=1)
    assert get(server.port, "/health") == (200, "ok\n")
    assert get(server.port, "/ready") == (200, "ready\n")

    async def one_call() -> tuple[int, str]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            assert wait_until(lambda: len(server.sessions) == 1)
            return await asyncio.to_thread(get, server.port, "/ready")

    assert asyncio.run(one_call()) == (503, "not ready: at capacity (max_calls 1)\n")
    assert wait_until(lambda: get(server.port, "/ready")[0] == 200)


def test_metrics_in_prometheus_text_format(serve):
    server = serve()

    async def call() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            for i in range(10):
                await ws.send(twilio_media(b"\x20" * 160, i))
            for _ in range(10):
                await asyncio.wait_for(ws.recv(), 5)

    asyncio.run(call())
    assert wait_until(lambda: server.runtime.calls == [])
    status, text = get(server.port, "/metrics")
    assert status == 200
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert samples["flowcat_calls_ended_total"] == "1"
    assert samples["flowcat_calls_active"] == "0"
    assert samples['flowcat_connections_closed_total{code="1000"}'] == "1"
    stage = next(k for k in samples if k.startswith("flowcat_stage_frames_total{"))
    assert int(samples[stage]) >= 12  # start, ten frames, end
    assert "# TYPE flowcat_stage_frame_seconds gauge" in text


def test_the_text_format_is_a_pure_function():
    runtime = {
        "calls": {"active": 2, "ended": 5},
        "slabs": {"in_use": 3, "capacity": 64, "drops": 0},
        "gc": {"collections": 1, "pause": {"max_us": 1500.0}},
        "pipelines": [],
    }
    server = {
        "connections": 2,
        "max_calls": 10,
        "refused": 1,
        "refusals": {"capacity": 1, "overloaded": 0, "draining": 0},
        "close_codes": {1000: 4, 1008: 1},
        "draining": False,
        "ready": True,
        "load": {"overloaded": False, "headroom": 0.75, "loop_lag_s": 0.01, "queue_delay_s": 0},
    }
    text = prometheus_text(runtime, server)
    assert "flowcat_calls_active 2\n" in text
    assert "flowcat_calls_max 10\n" in text
    assert 'flowcat_calls_refused_total{reason="capacity"} 1\n' in text
    assert 'flowcat_calls_refused_total{reason="draining"} 0\n' in text
    assert "flowcat_ready 1\n" in text and "flowcat_draining 0\n" in text
    assert "flowcat_headroom_ratio 0.75\n" in text
    assert "flowcat_overloaded 0\n" in text
    assert "flowcat_gc_pause_max_seconds 0.0015\n" in text
    assert 'flowcat_connections_closed_total{code="1008"} 1\n' in text
    assert text.count("# TYPE") == text.count("# HELP")
