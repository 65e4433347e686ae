"""AgentServer: the configured agent with its pages, routes and WebRTC gateway."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
import websockets
from helpers import wait_until
from served import echo_config
from threadpoolctl import threadpool_info, threadpool_limits

from flowcat_ft.server.app import AgentServer
from flowcat_ft.server.config import ConfigError, load_config


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_configured_server_has_every_entry_point(tmp_path, agent_server):
    server = agent_server(
        echo_config(tmp_path, "transports: {carriers: [twilio, raw]}\n", webrtc="auto")
    )
    port = server.port
    assert get(port, "/")[1].startswith(b"<!doctype html>")  # the playground
    assert get(port, "/status")[0] == 200
    assert get(port, "/twilio/answer?CallSid=CA1")[0] == 200
    assert get(port, "/telnyx/answer")[0] == 404  # not a configured carrier
    assert wait_until(lambda: json.loads(get(port, "/status.json")[1])["webrtc"]["running"], 30)
    assert set(server.urls()) == {"status", "playground", "twilio", "raw"}

    async def talk() -> bytes:
        async with websockets.connect(f"ws://127.0.0.1:{port}/playground") as ws:
            await ws.send(b"\x01\x02" * 320)
            while isinstance(reply := await asyncio.wait_for(ws.recv(), 5), str):
                pass
            return reply

    assert len(asyncio.run(talk())) == 640  # the echo, 20 ms at 16 kHz


def test_webrtc_and_the_playground_can_be_turned_off(tmp_path, agent_server):
    server = agent_server(echo_config(tmp_path, playground=False))
    assert get(server.port, "/")[0] == 404
    assert get(server.port, "/webrtc/offer")[0] == 404
    assert "webrtc" not in json.loads(get(server.port, "/status.json")[1])


def test_numpy_blas_runs_on_one_thread_while_the_server_runs(tmp_path):
    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    assert before, "numpy's BLAS is not loaded"
    with threadpool_limits(2, user_api="blas"):  # as on a machine with 2 cores or more
        server = AgentServer(echo_config(tmp_path, playground=False)).start()
        try:
            assert blas_threads() == [1] * len(before)
        finally:
            server.stop(grace=0)
        assert blas_threads() == [2] * len(before)


def test_webrtc_required_without_aiortc_stops_start_up(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCAT_WEBRTC_PYTHON", "/nonexistent/python")
    text = tmp_path / "agent.yaml"
    text.write_text("server: {host: 127.0.0.1, port: 0, webrtc: true}\nagent: {kind: echo}\n")
    with pytest.raises(ConfigError, match=r"agent\.yaml:1: server\.webrtc: "):
        AgentServer(load_config(text)).start()


def test_twilio_requests_are_verified_when_the_config_names_the_token(
    tmp_path, agent_server, monkeypatch
):
    monkeypatch.setenv("TEST_TWILIO_TOKEN", "secret-token")
    twilio = "transports: {twilio: {auth_token_env: TEST_TWILIO_TOKEN}}\n"
    server = agent_server(echo_config(tmp_path, twilio))
    assert get(server.port, "/twilio/answer?CallSid=CA1") == (403, b"missing X-Twilio-Signature\n")
    assert get(server.port, "/plivo/answer?CallUUID=u1")[0] == 200


def test_a_twilio_token_variable_that_is_not_set_stops_start_up(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_TWILIO_TOKEN", raising=False)
    twilio = "transports: {twilio: {auth_token_env: TEST_TWILIO_TOKEN}}\n"
    with pytest.raises(
        ConfigError, match=r"transports\.twilio\.auth_token_env: .*TEST_TWILIO_TOKEN"
    ):
        echo_config(tmp_path, twilio)


def test_a_draining_server_refuses_calls_and_webrtc_offers(tmp_path, agent_server):
    server = agent_server(echo_config(tmp_path, webrtc=True, webrtc_companions=1))
    server.drain()
    assert get(server.port, "/ready") == (503, b"not ready: draining\n")
    offer = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/webrtc/offer", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(offer, timeout=5)
    assert refused.value.code == 503
    assert b"draining" in refused.value.read()
    assert server.wait_for_calls(0)
