"""The live status page and its JSON."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
import urllib.request

import websockets
from carrier_messages import payloads, receive_until, twilio_dtmf, twilio_media, twilio_start
from helpers import FREE_THREADED, wait_until
from processors import TurnEveryFiveFrames

from flowcat_ft.frames import (
    InputAudioRawFrame,
    InputDTMFFrame,
    PauseOutputFrame,
    ResumeOutputFrame,
)
from flowcat_ft.pipeline import Pipeline
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.server.status import process_usage, status_pages


def get(port: int, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return reply.headers["Content-Type"], reply.read()


def test_status_json_shows_live_calls_stages_and_turns(serve):
    server = serve(Pipeline([TurnEveryFiveFrames]))
    server.pages.update(
        status_pages(server, server.runtime, {"webrtc": lambda: {"running": False}})
    )

    async def call() -> dict:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start(call="CA7"))
            for n in range(10):
                await ws.send(twilio_media(b"\xff" * 160, n))
            await receive_until(ws, lambda got: len(payloads(got)) >= 10, "10 frames of echo")
            assert wait_until(lambda: len(server.turns) == 2)
            _, body = await asyncio.to_thread(get, server.port, "/status.json")
            return json.loads(body)

    status = asyncio.run(call())
    assert status["server"]["gil_enabled"] is (not FREE_THREADED)
    [live] = status["calls"]
    assert (live["carrier"], live["carrier_call_id"], live["frames_in"]) == ("twilio", "CA7", 10)
    assert live["last_latency_ms"] is not None
    assert len(status["turns"]) == 2
    assert {stage["thread"] for stage in status["stages"]} >= {"flowcat-p0.0-s0"}
    assert status["slabs"]["capacity"] > 0
    gc = status["gc"]
    assert set(gc) == {"collections", "collected", "reasons", "pause", "all_pauses", "garbage"}
    assert gc["all_pauses"]["count"] >= 0 and gc["pause"]["max_us"] >= 0
    process = status["process"]
    assert process["rss_bytes"] > 1_000_000 and process["open_fds"] > 3
    assert process["threads"] >= 4  # main, housekeeper, a stage, two event loops
    assert status["webrtc"] == {"running": False}
    assert wait_until(lambda: json.loads(get(server.port, "/status.json")[1])["calls"] == [])


def test_status_page_is_html_that_polls_the_json(serve):
    server = serve()
    server.pages.update(status_pages(server, server.runtime))
    kind, page = get(server.port, "/status")
    assert kind == "text/html; charset=utf-8"
    assert b'fetch("/status.json"' in page


class BurnPerFrame(FrameProcessor):
    """Uses 5 ms of its stage thread's CPU per audio frame."""

    def process(self, frame, direction):
        if isinstance(frame, InputAudioRawFrame):
            end = time.thread_time() + 0.005
            while time.thread_time() < end:
                pass
        self.push(frame, direction)


def test_status_json_shows_cpu_by_part_per_call(serve):
    server = serve(Pipeline([BurnPerFrame]))
    server.pages.update(status_pages(server, server.runtime))

    def cpu() -> dict:
        return json.loads(get(server.port, "/status.json")[1])["cpu"]

    async def call() -> dict:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start(call="CA9"))

            async def read_the_echo() -> None:  # the server closes a peer that does not read
                async for _ in ws:
                    pass

            reading = asyncio.ensure_future(read_the_echo())
            n = 0

            def stage_seen() -> bool:
                stages = [p for p in cpu()["parts"] if p["kind"] == "stage"]
                return bool(stages) and stages[0]["us_per_call_s"] is not None

            # A phone's pace (a frame every 20 ms) until the stage's CPU shows per call.
            while n < 50 or not await asyncio.to_thread(stage_seen):
                await ws.send(twilio_media(b"\xff" * 160, n))
                n += 1
                await asyncio.sleep(0.02)
                assert n < 5000, "no stage CPU on /status.json"
            status = await asyncio.to_thread(cpu)
            reading.cancel()
            return status

    status = asyncio.run(call())
    kinds = {p["name"]: p["kind"] for p in status["parts"]}
    assert kinds["flowcat-ws-0"] == kinds["flowcat-ws-1"] == "event loop"
    assert kinds["flowcat-housekeeper"] == "other"
    busiest_stage = next(p for p in status["parts"] if p["kind"] == "stage")
    assert busiest_stage["name"].startswith("flowcat-p")
    assert busiest_stage["cpu_s"] >= 0.1  # at least 20 frames of 5 ms each
    assert status["calls"] > 0 and status["process"]["cpu_s"] >= busiest_stage["cpu_s"]
    assert "ended workers" in kinds
    assert b'id="cpu"' in get(server.port, "/status")[1]


class PauseKeys(FrameProcessor):
    """Key 3: pause the output, key 4: resume it (as a barge-in gate does), key 2:
    interrupt."""

    def process(self, frame, direction):
        if isinstance(frame, InputDTMFFrame) and frame.digit in "34":
            self.push(PauseOutputFrame() if frame.digit == "3" else ResumeOutputFrame())
        elif isinstance(frame, InputDTMFFrame) and frame.digit == "2":
            self.interrupt()
        self.push(frame, direction)


def test_status_json_counts_pauses_and_how_they_ended(serve):
    server = serve(Pipeline([PauseKeys]))
    server.pages.update(status_pages(server, server.runtime))

    def status() -> dict:
        return json.loads(get(server.port, "/status.json")[1])

    async def call() -> dict:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start(call="CA3"))
            # Paused and resumed, then paused and interrupted: a clear for each but the
            # resume, each waited for so that the keys' frames were all handled in order.
            for digit in "3432":
                await ws.send(twilio_dtmf(digit))
                if digit != "4":
                    while json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] != "clear":
                        pass
            return await asyncio.to_thread(status)

    live = asyncio.run(call())
    counts = {"pauses": 2, "interrupted": 1, "resumed": 1}
    [call_status] = live["calls"]
    assert call_status["pauses"] == counts and call_status["interruptions"] == 1
    assert live["pauses"] == counts
    # Once the call has ended, the server's totals keep its pauses.
    assert wait_until(lambda: status()["calls"] == [])
    assert status()["pauses"] == counts


def test_process_usage_shows_tracemalloc_figure_only_while_it_traces():
    assert not tracemalloc.is_tracing()
    assert process_usage()["traced_bytes"] is None
    tracemalloc.start()
    try:
        kept = [bytearray(1_000_000)]
        assert process_usage()["traced_bytes"] >= 1_000_000
    finally:
        tracemalloc.stop()
    del kept
