"""Bad input closes that connection only, with a close code that says why, while another
call on the same server keeps echoing; every slab comes back."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import pytest
import websockets
from carrier_messages import twilio_dtmf, twilio_media, twilio_start
from helpers import wait_until
from websockets.exceptions import ConnectionClosed

from flowcat_ft import InputDTMFFrame, OutputAudioRawFrame, Pipeline
from flowcat_ft.agents.echo import Echo
from flowcat_ft.processor import FrameProcessor
from flowcat_ft.transports.session import MediaOptions


async def healthy_call(port: int, stop: asyncio.Event) -> int:
    """Echo frames until ``stop``; return how many came back."""
    echoed = 0
    async with websockets.connect(f"ws://127.0.0.1:{port}/twilio") as ws:
        await ws.send(twilio_start("MZ-ok", "CA-ok"))
        n = 0
        while not stop.is_set():
            await ws.send(twilio_media(b"\x11" * 160, n, "MZ-ok"))
            n += 1
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 0.02)
                    echoed += 1
            except TimeoutError:
                pass
    return echoed


async def bad_call(port: int, messages: list, path: str = "/twilio") -> tuple[int, str]:
    async with websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as ws:
        try:
            for message in messages:
                await ws.send(message)
                await asyncio.sleep(0)
        except ConnectionClosed:
            pass

        async def read_until_closed() -> None:
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass

        await asyncio.wait_for(read_until_closed(), 5)
        return ws.close_code, ws.close_reason


def run_beside_a_healthy_call(port: int, messages: list, path: str = "/twilio"):
    async def main():
        stop = asyncio.Event()
        healthy = asyncio.create_task(healthy_call(port, stop))
        await asyncio.sleep(0.2)
        code, reason = await bad_call(port, messages, path)
        await asyncio.sleep(0.3)
        stop.set()
        return code, reason, await healthy

    return asyncio.run(main())


MEDIA_OK = twilio_media(b"\x22" * 160, 0)


@pytest.mark.parametrize(
    ("name", "messages", "code", "words"),
    [
        ("malformed JSON", [twilio_start(), "{not json"], 1007, "JSON"),
        ("unknown event", [twilio_start(), json.dumps({"event": "explode"})], 1008, "explode"),
        (
            "bad base64",
            [twilio_start(), MEDIA_OK.replace(base64.b64encode(b"\x22" * 160).decode(), "@@@")],
            1007,
            "base64",
        ),
        ("audio before start", [MEDIA_OK], 1008, "start"),
        ("binary on a text protocol", [twilio_start(), b"\x00\x01"], 1003, "binary"),
        ("oversized message", [twilio_start(), "x" * 70_000], 1009, ""),
        (
            "flood",
            [twilio_start()] + [twilio_media(b"\x22" * 160, i) for i in range(400)],
            1008,
            "flood",
        ),
    ],
)
def test_bad_input_closes_only_that_connection(serve, name, messages, code, words):
    server = serve()
    got_code, reason, echoed = run_beside_a_healthy_call(server.port, messages)
    assert got_code == code, f"{name}: closed with {got_code} ({reason})"
    assert words.lower() in reason.lower()
    assert echoed > 10, "the healthy call stopped echoing"
    assert wait_until(lambda: server.runtime.calls == [])
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


@pytest.mark.parametrize(
    ("name", "path", "message", "code", "words"),
    [
        ("half a sample", "/raw?codec=pcm16&sample_rate=16000", b"\x01" * 321, 1007, "samples"),
        ("too long to decode", "/raw?codec=mulaw&sample_rate=8000", b"\x22" * 2000, 1009, "long"),
    ],
)
def test_raw_audio_that_fits_no_slab_closes_only_that_connection(
    serve, name, path, message, code, words
):
    server = serve()
    got_code, reason, echoed = run_beside_a_healthy_call(server.port, [message], path)
    assert got_code == code, f"{name}: closed with {got_code} ({reason})"
    assert words in reason
    assert echoed > 10, "the healthy call stopped echoing"
    assert wait_until(lambda: server.runtime.calls == [])
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


RATES = "8000, 16000, 24000, 44100, 48000"


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("sample_rate=abc", f"sample_rate must be one of {RATES}, not 'abc'"),
        ("sample_rate=999999999", f"sample_rate must be one of {RATES}, not 999999999"),
        ("sample_rate=99999999999999999999", f"sample_rate must be one of {RATES}, not '9999"),
        ("sample_rate=%C2%B2", f"sample_rate must be one of {RATES}, not '\u00b2'"),
        ("sample_rate=-8000", f"sample_rate must be one of {RATES}, not '-8000'"),
        ("codec=opus", "codec must be one of pcm16, mulaw, alaw, not 'opus'"),
        ("codec=" + "%C3%A9" * 200, "codec must be one of pcm16, mulaw, alaw, not 'éé"),
        ("sample_rat=8000", "unknown option 'sample_rat': this route takes codec, sample_rate"),
        ("max_message_bytes=99999999", "unknown option 'max_message_bytes'"),
    ],
)
def test_bad_raw_options_are_refused_naming_the_option_and_its_values(serve, query, words):
    server = serve()
    code, reason, echoed = run_beside_a_healthy_call(server.port, [], f"/raw?{query}")
    assert code == 1008 and reason.startswith(f"bad stream options: {words}"), reason
    assert len(reason.encode()) <= 123
    assert echoed > 10, "the healthy call stopped echoing"
    assert wait_until(lambda: server.runtime.calls == [])


def test_a_carrier_route_ignores_what_the_carrier_adds_to_its_url(serve):
    server = serve()

    async def call() -> bytes:
        url = f"ws://127.0.0.1:{server.port}/twilio?sample-rate=16000&custom=1"
        async with websockets.connect(url) as ws:
            await ws.send(twilio_start())
            await ws.send(MEDIA_OK)
            return json.loads(await asyncio.wait_for(ws.recv(), 5))["event"]

    assert asyncio.run(call()) == "media"


def test_a_carrier_start_at_a_rate_flowcat_does_not_take_opens_no_call(serve):
    server = serve()
    start = json.loads(twilio_start())
    start["start"]["mediaFormat"]["sampleRate"] = 999_999_999
    code, reason, echoed = run_beside_a_healthy_call(server.port, [json.dumps(start)])
    assert code == 1003 and "a sample rate of 999999999 Hz: flowcat takes 8000" in reason
    assert echoed > 10, "the healthy call stopped echoing"
    assert wait_until(lambda: server.runtime.calls == [])
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


class Firehose(FrameProcessor):
    """On any key: six minutes of 16 kHz audio at once, far more than sockets buffer."""

    def process(self, frame, direction):
        if isinstance(frame, InputDTMFFrame):
            pool = self.pool
            for _ in range(3000):  # 120 ms per frame
                self.push(OutputAudioRawFrame.from_bytes(pool, b"\x01\x02" * 1920, 16000))
        self.push(frame, direction)


def test_a_peer_that_stops_reading_is_closed(serve):
    options = MediaOptions(pace_output=False, max_unsent_bytes=64 * 1024)
    server = serve(Pipeline([Firehose, Echo]), slabs=4096, options=options)

    async def main() -> None:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        async with websockets.connect(
            f"ws://127.0.0.1:{server.port}/raw", sock=sock, max_queue=1
        ) as ws:
            await ws.send(json.dumps({"event": "dtmf", "digit": "1"}))
            await asyncio.sleep(3)  # not reading

    asyncio.run(main())
    assert wait_until(lambda: server.close_codes[1008] == 1, 10)
    assert wait_until(lambda: server.runtime.calls == [], 10)
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_a_garbage_dtmf_digit_is_refused(serve):
    server = serve()
    code, reason = asyncio.run(bad_call(server.port, [twilio_start(), twilio_dtmf("X")]))
    assert code == 1007 and "digit" in reason.lower()
