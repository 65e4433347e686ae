"""`flowcat-ft serve`, the README's first command: it serves calls, stops cleanly on
SIGTERM, and says so plainly when its port is taken."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET

import websockets
from carrier_messages import twilio_media, twilio_start

from flowcat_ft.server.streamtokens import StreamTokens

SERVE = [sys.executable, "-m", "flowcat_ft.cli", "serve"]


def start_server(*args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowcat_ft.cli", "serve", "--host", "127.0.0.1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if "/twilio" in line:
            return proc, int(line.rsplit(":", 1)[1].split("/")[0])
    raise AssertionError(f"the server did not start: {proc.stderr.read()}")


def test_serve_echoes_a_twilio_call_and_stops_on_sigterm():
    proc, port = start_server("--agent", "echo", "--port", "0", "--log-level", "WARNING")
    try:
        answer = f"http://127.0.0.1:{port}/twilio/answer?CallSid=CA1"
        with urllib.request.urlopen(answer, timeout=10) as reply:  # as Twilio does first
            stream = ET.fromstring(reply.read()).find("./Connect/Stream").get("url")

        async def call() -> list[bytes]:
            async with websockets.connect(stream) as ws:
                await ws.send(twilio_start(call="CA1"))
                for i in range(5):
                    await ws.send(twilio_media(b"\x55" * 160, i))
                replies = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(5)]
                return [base64.b64decode(r["media"]["payload"]) for r in replies]

        assert asyncio.run(call()) == [b"\x55" * 160] * 5
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "flowcat_ft.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_second_server_on_the_same_port_is_refused():
    """SO_REUSEPORT would let it share the first one's port (and calls) silently."""
    proc, port = start_server("--agent", "echo", "--port", "0", "--log-level", "WARNING")
    try:
        second = subprocess.run(
            [*SERVE, "--agent", "echo", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert "already answers" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_the_default_offline_agent_greets_a_caller():
    proc, port = start_server("--port", "0", "--log-level", "WARNING")
    try:

        async def call() -> int:
            heard = 0
            url = f"ws://127.0.0.1:{port}/raw?codec=pcm16&sample_rate=16000"
            async with websockets.connect(url) as ws:
                silence = b"\x00\x00" * 320
                for _ in range(150):  # three seconds of the caller listening
                    await ws.send(silence)
                    try:
                        message = await asyncio.wait_for(ws.recv(), 0.02)
                        heard += len(message) if isinstance(message, bytes) else 0
                    except TimeoutError:
                        pass
            return heard

        assert asyncio.run(call()) > 16000  # over half a second of speech came back
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_a_bad_graph_stops_start_up_naming_the_file(tmp_path):
    graph = tmp_path / "agent.yaml"
    graph.write_text("start: greet\nnodes:\n  greet: [not, a, node]\n")
    result = subprocess.run(
        [sys.executable, "-m", "flowcat_ft.cli", "serve", "--graph", str(graph), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert str(graph) in result.stderr


def test_serve_takes_an_agent_config_and_reports_set_up(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("agent:\n  kind: echo\nlimits:\n  max_calls: 3\n")
    proc = subprocess.Popen(
        [*SERVE, str(config), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("Ctrl-C"):
                break
        assert lines[0].startswith("flowcat-ft on Python")
        assert "building the echo agent" in lines
        assert any(line.startswith("ready in") for line in lines)
        assert any(line.startswith("status ") for line in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_a_config_mistake_stops_start_up_naming_file_line_and_field(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("server:\n  port: 8765\n  prot: 1\nagent:\n  vad:\n    stop_secs: soon\n")
    result = subprocess.run([*SERVE, str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{config}:3: server.prot: unknown field (did you mean 'port'?)" in result.stderr
    assert f"{config}:6: agent.vad.stop_secs: " in result.stderr


def test_stream_url_gives_a_carrier_without_a_webhook_a_lasting_stream_url(tmp_path, monkeypatch):
    config = tmp_path / "agent.yaml"
    config.write_text(
        "server: {public_url: https://agent.example.com}\n"
        "transports: {stream_token_key_env: TEST_STREAM_KEY}\n"
    )
    env = {"TEST_STREAM_KEY": "s" * 32}
    monkeypatch.setenv("TEST_STREAM_KEY", env["TEST_STREAM_KEY"])
    command = [sys.executable, "-m", "flowcat_ft.cli", "stream-url", "exotel", str(config)]
    result = subprocess.run([*command, "--days", "7"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("wss://agent.example.com/exotel/")
    grant = StreamTokens(env["TEST_STREAM_KEY"].encode()).check("exotel", url.rsplit("/", 1)[1])
    assert grant.call_id == ""  # any call of the carrier
    assert 6.9 * 86400 < grant.expires - time.time() <= 7 * 86400

    config.write_text("transports: {stream_token_key_env: TEST_STREAM_KEY}\n")
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "server.public_url: say where the carrier reaches this server" in result.stderr
