"""Structured logs: every line about a call carries its id."""

from __future__ import annotations

import asyncio
import json
import logging

import websockets
from carrier_messages import payloads, receive_until, twilio_media, twilio_start
from helpers import wait_until

from flowcat_ft.server.logs import JsonFormatter, TextFormatter


def record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    entry = logging.LogRecord("flowcat_ft.x", logging.INFO, __file__, 1, message, args, exc_info)
    entry.__dict__.update(extra)
    return entry


def test_text_lines_name_the_call_and_its_context():
    line = TextFormatter().format(record("call %s", "started", call_id=7, carrier="twilio"))
    assert line.endswith("INFO flowcat_ft.x [call 7] call started carrier=twilio")
    assert TextFormatter().format(record("listening")).endswith("INFO flowcat_ft.x listening")


def test_json_lines_are_one_object_each_with_the_error():
    try:
        raise ValueError("bad frame")
    except ValueError:
        import sys

        entry = record("failed", exc_info=sys.exc_info(), call_id=3, close_code=1007, other=1)
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed"
    assert (parsed["call_id"], parsed["close_code"], parsed["level"]) == (3, 1007, "INFO")
    assert "ValueError: bad frame" in parsed["error"]
    assert "other" not in parsed


def test_a_calls_log_lines_carry_its_ids(serve, caplog):
    caplog.set_level(logging.INFO, logger="flowcat_ft")
    server = serve()

    async def call() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/twilio") as ws:
            await ws.send(twilio_start(call="CA42"))
            await ws.send(twilio_media(b"\xff" * 160, 0))
            await receive_until(ws, lambda got: len(payloads(got)) >= 1, "the echo")
            await ws.send("not json")  # closes the connection with 1007
            await ws.wait_closed()

    asyncio.run(call())
    assert wait_until(lambda: any(r.getMessage().startswith("call ended") for r in caplog.records))
    about_call = [r for r in caplog.records if hasattr(r, "call_id")]
    messages = [r.getMessage() for r in about_call]
    assert messages[0] == "call started"
    assert any(m.startswith("closing: ") for m in messages)
    assert messages[-1].startswith("call ended")
    assert {r.carrier_call_id for r in about_call} == {"CA42"}
    assert len({r.call_id for r in about_call}) == 1
    assert about_call[-1].close_code == 1007
