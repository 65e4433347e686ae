"""``flowcat-ft serve`` with SIP on: the configuration, and a call to the served agent."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from helpers import self_signed_certificate, wait_until
from sip_helpers import finished, free_port, live_call, sipp

from flowcat_ft.server.app import AgentServer
from flowcat_ft.server.config import ConfigError, load_config


def write(tmp_path, sip: str):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "server: {host: 127.0.0.1, port: 0, webrtc: false, playground: false}\n"
        f"transports:\n  carriers: [raw]\n  sip: {sip}\n"
        "agent: {kind: echo}\n"
    )
    return path


def test_the_served_echo_agent_answers_a_sip_call(tmp_path):
    low = free_port(even=True) // 2 * 2
    config = load_config(
        write(
            tmp_path,
            "{enabled: true, host: 127.0.0.1, port: 0, "
            f"rtp_port_min: {low}, rtp_port_max: {low + 20}, codecs: [PCMA]}}",
        )
    )
    server = AgentServer(config).start()
    try:
        uri = server.urls()["sip"]
        assert uri == f"sip:agent@127.0.0.1:{server.sip.port}"
        status, log = sipp(server.sip, "call.xml")
        assert status == 0, log
        assert wait_until(lambda: server.sip.ended)
        call = server.sip.ended[-1]
        assert call.media.packets_in > 50 and call.media.port in range(low, low + 20)
        assert wait_until(lambda: server.runtime.pool.in_use == 0)
    finally:
        server.stop(grace=0)


def test_sip_mistakes_are_named(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, "{enabled: true, codecs: [PCMU, G729]}"))
    expected = "transports.sip.codecs[1]: expected one of PCMU, PCMA, OPUS, got 'G729'"
    assert expected in str(raised.value)
    path = write(
        tmp_path,
        "{enabled: true, rtp_port_min: 30000, rtp_port_max: 30001, "
        "allowed_sources: [10.0.0.0/8, nonsense]}",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert "RTP port range 30000-30001 has no room for one call" in text
    assert "transports.sip.allowed_sources[1]: expected an address or a network" in text
    path = write(
        tmp_path,
        "{enabled: true, trunks: [{registrar: 'pbx example', user: a, password_env: NO_SUCH_VAR}]}",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert "transports.sip.trunks[0].registrar: expected a sip: URI" in text
    assert "the environment variable NO_SUCH_VAR (the trunk's password) is not set" in text


def test_calls_placed_over_http_with_a_token(tmp_path, monkeypatch, phone):
    monkeypatch.setenv("FLOWCAT_TEST_DIAL_TOKEN", "s3cret")
    low = free_port(even=True) // 2 * 2
    sip = (
        "{enabled: true, host: 127.0.0.1, port: 0, dial_token_env: FLOWCAT_TEST_DIAL_TOKEN, "
        f"rtp_port_min: {low}, rtp_port_max: {low + 20}}}"
    )
    server = AgentServer(load_config(write(tmp_path, sip))).start()
    try:
        uri, process = phone("answer.xml")
        assert post(server.port, "/sip/calls", {"to": uri}, "wrong")[0] == 403
        assert post(server.port, "/sip/calls", {"number": uri})[0] == 400
        status, answer = post(server.port, "/sip/calls", {"to": uri})
        assert status == 200, answer
        assert post(server.port, "/sip/hangup", {"call_id": answer["call_id"]})[0] == 200
        finished(process)  # answered, then hung up with a BYE
    finally:
        server.stop(grace=0)


def post(port: int, path: str, body: dict, token: str = "s3cret") -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_drained_server_waits_for_its_live_sip_call(tmp_path):
    low = free_port(even=True) // 2 * 2
    config = load_config(
        write(
            tmp_path,
            "{enabled: true, host: 127.0.0.1, port: 0, early_media_secs: 0.5, "
            f"rtp_port_min: {low}, rtp_port_max: {low + 20}}}",
        )
    )
    server = AgentServer(config).start()
    try:
        assert server.sip.options.early_media_secs == 0.5
        with live_call(server.sip) as live:
            assert wait_until(lambda: [c.state for c in server.sip.calls] == ["confirmed"], 20)
            server.drain()
            assert server.sip.draining
            status, log = sipp(server.sip, "draining.xml")
            assert status == 0, log
            assert server.live_calls() == 1
            assert not server.wait_for_calls(0.2)  # what `serve` waits on after SIGTERM
            live.go_on()
            live.finished()
        assert server.wait_for_calls(10)
    finally:
        server.stop(grace=0)


def test_sip_over_tls_from_the_configuration(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, "{enabled: true, transports: [udp, tls]}"))
    assert "transports.sip.transports: tls needs transports.sip.tls_cert and tls_key" in str(
        raised.value
    )
    cert, key = self_signed_certificate(tmp_path)
    config = load_config(
        write(
            tmp_path,
            "{enabled: true, host: 127.0.0.1, port: 0, transports: [tls], tls_port: 0, "
            f"tls_cert: {cert}, tls_key: {key}}}",
        )
    )
    server = AgentServer(config).start()
    try:
        port = server.sip.endpoint.tls_port
        assert server.urls()["sip"] == f"sip:agent@127.0.0.1:{port};transport=tls"
        options = (
            f"OPTIONS sip:agent@127.0.0.1:{port};transport=tls SIP/2.0\r\n"
            "Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls-1\r\n"
            "From: <sip:test@127.0.0.1>;tag=1\r\nTo: <sip:agent@127.0.0.1>\r\n"
            "Call-ID: tls-options-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        context = ssl.create_default_context(cafile=cert)  # checks the served certificate
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(options.encode())
            assert tls.recv(4096).startswith(b"SIP/2.0 200 OK\r\n")
    finally:
        server.stop(grace=0)
