"""What the caller hears: DTMF arrives as frames, bot audio is paced at real time, a mark
follows each utterance, an interruption clears what the carrier still holds, and a pause
clears it too, to send it again on resume."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import numpy as np
import websockets
from carrier_messages import receive_until, twilio_dtmf, twilio_start
from helpers import wait_until
from websockets.exceptions import ConnectionClosedOK

from flowcat_ft import (
    Direction,
    EndFrame,
    FrameProcessor,
    InputDTMFFrame,
    OutputAudioRawFrame,
    PauseOutputFrame,
    Pipeline,
    ResumeOutputFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from flowcat_ft.audio import g711
from flowcat_ft.transports.pacer import Playout, Ticker


def numbered(i: int) -> bytes:
    """20 ms of 8 kHz audio whose first two samples (in µ-law too) tell frame i of 100."""
    return np.array([512 * (i // 10), 512 * (i % 10)] + [4096] * 158, np.int16).tobytes()


class KeypadBot(FrameProcessor):
    """Key 1: speak two seconds of audio, frames numbered. Key 2: interrupt, as a barge-in
    would. Keys 3 and 4: pause the output and resume it, as a barge-in gate does. Key 5:
    end the call."""

    def process(self, frame, direction):
        if isinstance(frame, InputDTMFFrame) and frame.digit == "1":
            self.push(TTSStartedFrame())
            for i in range(100):  # 100 x 20 ms at 8 kHz, produced at once like a TTS burst
                self.push(OutputAudioRawFrame.from_bytes(self.pool, numbered(i), 8000))
            self.push(TTSStoppedFrame())
        elif isinstance(frame, InputDTMFFrame) and frame.digit == "2":
            self.interrupt()
        elif isinstance(frame, InputDTMFFrame) and frame.digit in "34":
            self.push(PauseOutputFrame() if frame.digit == "3" else ResumeOutputFrame())
        elif isinstance(frame, InputDTMFFrame) and frame.digit == "5":
            self.push(EndFrame(), Direction.UPSTREAM)
        self.push(frame, direction)


def twilio_events(messages: list) -> list[str]:
    return [json.loads(m)["event"] for m in messages]


async def receive_until_closed(ws) -> list:
    """What the server sends until it ends the call and closes the connection."""
    messages = []
    with contextlib.suppress(ConnectionClosedOK):
        while True:
            messages.append(await asyncio.wait_for(ws.recv(), 5))
    return messages


def test_bot_audio_is_paced_and_followed_by_a_mark(serve):
    server = serve(Pipeline([KeypadBot]))

    async def call() -> tuple[list[float], list]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            await ws.send(twilio_dtmf("1"))
            start = time.monotonic()
            times, messages = [], []
            while len(messages) < 101:
                messages.append(await asyncio.wait_for(ws.recv(), 5))
                times.append(time.monotonic() - start)
            sessions.extend(server.sessions)
            await ws.send(
                json.dumps(
                    {
                        "event": "mark",
                        "sequenceNumber": "9",
                        "streamSid": "MZ1",
                        "mark": {"name": json.loads(messages[-1])["mark"]["name"]},
                    }
                )
            )
            await asyncio.to_thread(wait_until, lambda: sessions[0].marks_played)
            return times, messages

    sessions = []
    times, messages = asyncio.run(call())
    events = twilio_events(messages)
    assert events == ["media"] * 100 + ["mark"]
    payload = base64.b64decode(json.loads(messages[0])["media"]["payload"])
    assert len(payload) == 160  # 20 ms of 8 kHz µ-law per message
    # Two seconds of audio take about two seconds to arrive, not a burst: at most the
    # lead (80 ms) ahead of real time, give or take scheduling.
    assert times[-2] > 1.7
    assert times[49] > 0.8
    assert sessions[0].marks_sent == 1 and sessions[0].marks_played == 1


def test_an_interruption_sends_clear_and_stops_the_queued_audio(serve):
    server = serve(Pipeline([KeypadBot]))

    async def call() -> list:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            await ws.send(twilio_dtmf("1"))
            first = [await asyncio.wait_for(ws.recv(), 5) for _ in range(10)]
            await ws.send(twilio_dtmf("2"))
            sessions.extend(server.sessions)
            # Then end the call: the server closes once the audio still queued has played,
            # so whatever the interruption left to play comes before the close.
            await ws.send(twilio_dtmf("5"))
            return first + await receive_until_closed(ws)

    sessions = []
    events = twilio_events(asyncio.run(call()))
    assert "clear" in events
    after_clear = events[events.index("clear") + 1 :]
    assert after_clear.count("media") <= 2  # only what was already on its way
    assert events.count("media") < 40
    assert sessions[0].clears == 1


def test_a_mark_an_interruption_drops_is_not_counted_as_sent(serve):
    server = serve(Pipeline([KeypadBot]))

    async def call() -> tuple[list, list]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            await ws.send(twilio_dtmf("1"))  # two seconds of audio, then its mark...
            cut = [await asyncio.wait_for(ws.recv(), 5) for _ in range(10)]
            await ws.send(twilio_dtmf("2"))  # ...dropped from the pacer by the interruption
            cut += await receive_until(ws, lambda got: "clear" in twilio_events(got), "clear")
            sessions.extend(server.sessions)
            # A mark the interruption failed to drop would come after the clear, ahead of
            # the next utterance's audio: the first mark heard would be that one.
            await ws.send(twilio_dtmf("1"))
            heard = await receive_until(ws, lambda got: "mark" in twilio_events(got), "a mark")
            played = {"name": json.loads(heard[-1])["mark"]["name"]}
            await ws.send(json.dumps({"event": "mark", "streamSid": "MZ1", "mark": played}))
            # The server counts the mark on its own loop.
            await asyncio.to_thread(wait_until, lambda: sessions[0].marks_played)
            return cut, heard

    sessions = []
    cut, heard = asyncio.run(call())
    assert "clear" in twilio_events(cut) and "mark" not in twilio_events(cut)
    assert twilio_events(heard) == ["media"] * 100 + ["mark"]
    assert json.loads(heard[-1])["mark"]["name"] == "utterance-2"  # names stay unique
    assert sessions[0].marks_played == 1
    assert sessions[0].marks_sent == 1  # the dropped mark was never sent


def test_the_pacer_counts_the_marks_it_drops():
    loop = asyncio.new_event_loop()
    try:
        sent = []
        playout = Playout(sent.append, Ticker(loop), lead=0.0, max_buffer=0.06)  # 3 items
        for item in ["a1", "m1", "a2", "a3", "m2"]:  # a1 goes at once; m1 makes room for m2
            playout.play(item, 0.0 if item[0] == "m" else 60.0)  # a minute each: none due
        assert (sent, playout.dropped, playout.marks_dropped) == (["a1"], 1, 1)
        assert playout.clear() == 3 and playout.marks_dropped == 2  # a2, a3 and m2
    finally:
        loop.close()


def mulaw(pcm: bytes) -> bytes:
    out = np.empty(len(pcm) // 2, np.uint8)
    return out[: g711.ENCODERS["mulaw"](np.frombuffer(pcm, np.int16), out)].tobytes()


def test_a_pause_clears_the_carrier_and_the_resume_sends_again_what_it_dropped(serve):
    server = serve(Pipeline([KeypadBot]))

    def frame_number(message: str) -> int:
        first = base64.b64decode(json.loads(message)["media"]["payload"])[:2]
        return keys.index(first)

    async def call() -> list:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            await ws.send(twilio_dtmf("1"))
            messages = [await asyncio.wait_for(ws.recv(), 5) for _ in range(20)]
            await ws.send(twilio_dtmf("3"))
            while "clear" not in twilio_events(messages):
                messages.append(await asyncio.wait_for(ws.recv(), 5))
            await ws.send(twilio_dtmf("4"))
            while "mark" not in twilio_events(messages):
                messages.append(await asyncio.wait_for(ws.recv(), 5))
            sessions.extend(server.sessions)
            return messages

    keys = [mulaw(numbered(i))[:2] for i in range(100)]
    assert len(set(keys)) == 100
    sessions = []
    messages = asyncio.run(call())
    events = twilio_events(messages)
    assert events.count("clear") == 1 and events[-1] == "mark"
    cut = events.index("clear")
    before = [frame_number(m) for m in messages[:cut]]
    after = [frame_number(m) for m in messages[cut + 1 : -1]]
    # In order up to the pause; then from a frame the carrier had not finished playing
    # (no more than the lead, 80 ms, and the frame playing), on to the end: all 100 heard.
    assert before == list(range(len(before)))
    assert before[-1] - 5 <= after[0] <= before[-1] + 1
    assert after == list(range(after[0], 100))
    assert (sessions[0].pauses, sessions[0].clears, sessions[0].marks_sent) == (1, 0, 1)


def test_a_call_that_ends_while_paused_plays_out_what_was_kept(serve):
    server = serve(Pipeline([KeypadBot]))

    async def call() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            await ws.send(twilio_dtmf("1"))
            messages.extend([await asyncio.wait_for(ws.recv(), 5) for _ in range(20)])
            await ws.send(twilio_dtmf("3"))
            while "clear" not in twilio_events(messages):
                messages.append(await asyncio.wait_for(ws.recv(), 5))
            await ws.send(twilio_dtmf("5"))
            messages.extend(await receive_until_closed(ws))  # once the audio is out

    messages = []
    asyncio.run(call())
    media = [m for m in messages if json.loads(m)["event"] == "media"]
    keys = {base64.b64decode(json.loads(m)["media"]["payload"])[:2] for m in media}
    assert keys == {mulaw(numbered(i))[:2] for i in range(100)}


def test_the_pacer_takes_back_what_has_not_played_when_it_pauses():
    loop = asyncio.new_event_loop()
    now = [100.0]
    loop.time = lambda: now[0]
    try:
        sent = []
        playout = Playout(sent.append, Ticker(loop), lead=0.05)
        for i in range(5):
            playout.play(f"a{i}", 0.02)  # a0, a1, a2 go at once (the lead); a3, a4 queue
        assert sent == ["a0", "a1", "a2"] and playout.queued == 2
        now[0] += 0.03  # a0 has played, a1 is playing
        playout.pause(take_back=True)
        playout.play("a5", 0.02)
        playout.play("m", 0.0)
        assert not playout.tick(now[0]) and sent == ["a0", "a1", "a2"]  # paused
        assert playout.queued == 6  # a1 a2 a3 a4 a5 m
        now[0] += 1.0
        sent.clear()
        playout.resume()  # sends the lead's worth at once
        assert sent == ["a1", "a2", "a3"]
        while playout.tick(now[0]):
            now[0] += 0.02
        assert sent == ["a1", "a2", "a3", "a4", "a5", "m"]

        # Without taking back (a carrier that cannot clear), only what was queued waits.
        sent.clear()
        now[0] += 1.0
        for i in range(5):
            playout.play(f"b{i}", 0.02)
        playout.pause(take_back=False)
        assert playout.queued == 2 and sent == ["b0", "b1", "b2"]
        assert playout.clear() == 2 and not playout.paused  # an interruption ends a pause
    finally:
        loop.close()


class DtmfLog(FrameProcessor):
    """Keeps the digits it sees."""

    digits: list[str] = []

    def process(self, frame, direction):
        if isinstance(frame, InputDTMFFrame) and direction is Direction.DOWNSTREAM:
            self.digits.append(frame.digit)
        self.push(frame, direction)


def test_dtmf_arrives_as_frames(serve):
    server = serve(Pipeline([DtmfLog]))

    async def call() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start())
            for i, digit in enumerate("12#*9"):
                await ws.send(twilio_dtmf(digit, i))
            await asyncio.to_thread(wait_until, lambda: len(DtmfLog.digits) == 5)

    asyncio.run(call())
    assert DtmfLog.digits == list("12#*9")
