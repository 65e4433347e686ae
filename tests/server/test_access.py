"""Who may use a served agent: start-up refuses a server other machines can reach with no
access token (unless --insecure, then warned of); with a token, /raw, the playground,
WebRTC offers, /status and /metrics refuse requests without it (401) or with a wrong one
(403) before any call or slab is opened, and take it as a bearer token, a query parameter
or a browser session made from it (Jupyter-style), in headless Chromium too; TLS serves
https and wss; the configuration's mistakes are named."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import websockets
from browser import Chromium, need_chromium
from helpers import wait_until
from served import echo_config

from flowcat_ft.server.access import SESSION_COOKIE, AccessToken
from flowcat_ft.server.app import AgentServer
from flowcat_ft.server.config import ConfigError, load_config
from flowcat_ft.transports.http import HttpRequest

TOKEN = "test-access-token-0123456789"
PCM = b"\x01\x02" * 320  # 20 ms at 16 kHz


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("TEST_ACCESS_TOKEN", TOKEN)
    return TOKEN


def request(
    port: int, path: str, headers: dict | None = None, method: str = "GET", body: bytes = b""
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


async def echo(port: int, path: str, headers: dict | None = None, scheme: str = "ws", **kw):
    url = f"{scheme}://127.0.0.1:{port}{path}"
    async with websockets.connect(url, additional_headers=headers, **kw) as ws:
        await ws.send(PCM)
        while isinstance(reply := await asyncio.wait_for(ws.recv(), 5), str):
            pass  # the playground's events
        return reply


def refusal(port: int, path: str, headers: dict | None = None) -> tuple[int, str]:
    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(echo(port, path, headers))
    response = refused.value.response
    return response.status_code, response.body.decode()


# -- start-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "agent.example.com", ""])
def test_start_up_refuses_a_server_others_can_reach_with_no_token(tmp_path, host):
    cfg = echo_config(tmp_path, host=host)
    with pytest.raises(ConfigError) as refused:
        AgentServer(cfg).start()
    message = str(refused.value)
    assert message.startswith(f"{cfg.source}:1: server.host: {host} can be reached from other")
    assert "set server.access_token_env" in message and "--insecure" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_a_server_on_loopback_needs_no_token(tmp_path, agent_server, host):
    server = agent_server(echo_config(tmp_path, host=host))
    assert server.port > 0


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowcat_ft.cli", "serve", "--agent", "echo", *args]


def test_the_command_line_refuses_an_exposed_server_and_says_what_to_set(monkeypatch):
    result = subprocess.run(
        serve_command("--host", "0.0.0.0", "--port", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "server.host: 0.0.0.0 can be reached from other machines" in result.stderr
    assert "server.access_token_env" in result.stderr and "--insecure" in result.stderr


def start_cli(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """Start ``flowcat-ft serve`` and read its output up to "Ctrl-C to stop"."""
    proc = subprocess.Popen(
        serve_command("--port", "0", "--log-level", "WARNING", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("Ctrl-C"):
            return proc, lines
    raise AssertionError(f"the server did not start: {proc.stderr.read()}")


def stop_cli(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    return proc.stderr.read()


def test_insecure_serves_anyone_and_warns_at_every_start():
    for _ in range(2):
        proc, _ = start_cli("--host", "0.0.0.0", "--insecure")
        stderr = stop_cli(proc)
        assert "flowcat-ft: WARNING: serving 0.0.0.0:0 with no access token (insecure)" in stderr


def test_with_a_token_an_exposed_server_starts_and_says_how_to_sign_in(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("server: {host: 0.0.0.0, access_token_env: TEST_ACCESS_TOKEN}\n")
    proc, lines = start_cli(str(path), env={"TEST_ACCESS_TOKEN": TOKEN})
    assert any("(sign in with the token in $TEST_ACCESS_TOKEN)" in line for line in lines)
    assert TOKEN not in "\n".join(lines)
    assert "WARNING" not in stop_cli(proc)


# -- the access token ---------------------------------------------------------------------------


def test_without_the_token_nothing_of_the_servers_own_opens(tmp_path, agent_server, token):
    server = agent_server(echo_config(tmp_path, access_token_env="TEST_ACCESS_TOKEN"))
    port = server.port
    for path in ("/raw", "/playground", "/raw?codec=pcm16&sample_rate=16000"):
        status, body = refusal(port, path)
        assert status == 401 and "send Authorization: Bearer TOKEN" in body
        assert "?access_token=TOKEN" in body
        status, body = refusal(port, path, {"Authorization": "Bearer wrong-token"})
        assert (status, body) == (403, "wrong access token\n")
        assert refusal(port, f"{path}{'&' if '?' in path else '?'}access_token=wrong")[0] == 403
    for path in ("/", "/playground", "/playground/playground.js", "/status", "/status.json"):
        response = request(port, path)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert request(port, "/metrics").status == 401
    assert server.runtime.calls == [] and server.runtime.pool.in_use == 0  # nothing opened
    # What anyone may reach: health and readiness, and the carriers' routes (theirs to check).
    assert request(port, "/health").status == 200 and request(port, "/ready").status == 200
    assert request(port, "/twilio/answer?CallSid=CA1").status == 200


def test_the_token_as_a_bearer_header_or_a_query_parameter(tmp_path, agent_server, token):
    server = agent_server(echo_config(tmp_path, access_token_env="TEST_ACCESS_TOKEN"))
    port, bearer = server.port, {"Authorization": f"Bearer {TOKEN}"}
    assert asyncio.run(echo(port, "/raw?codec=pcm16&sample_rate=16000", bearer)) == PCM
    assert asyncio.run(echo(port, f"/raw?access_token={TOKEN}&sample_rate=16000")) == PCM
    assert asyncio.run(echo(port, f"/playground?access_token={TOKEN}")) == PCM
    assert request(port, "/status.json", bearer).status == 200
    assert request(port, f"/metrics?access_token={TOKEN}").status == 200
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_a_page_opened_with_the_token_signs_the_browser_in(tmp_path, agent_server, token):
    server = agent_server(echo_config(tmp_path, access_token_env="TEST_ACCESS_TOKEN"))
    port = server.port
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    form = request(port, "/?autostart=ws", browser)
    assert form.status == 401 and b"name=access_token type=password" in form.body
    assert b'<input type=hidden name="autostart" value="ws">' in form.body
    signed_in = request(port, f"/?access_token={TOKEN}&autostart=ws", browser)
    assert signed_in.status == 303 and signed_in.headers["Location"] == "/?autostart=ws"
    cookie = signed_in.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    session = {"Cookie": cookie.split(";")[0]}
    assert request(port, "/", session).body.startswith(b"<!doctype html>")
    assert request(port, "/playground", session).body.startswith(b"<!doctype html>")
    here = {**session, "Origin": f"http://127.0.0.1:{port}"}
    assert asyncio.run(echo(port, "/playground", here)) == PCM
    # A page of another site (or another port: cookies are not kept per port) cannot use it.
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null"):
        status, body = refusal(port, "/playground", {**session, "Origin": origin})
        assert (status, body) == (403, "a session cookie sent from another site\n")
    # A session whose signature or expiry was changed is no session.
    expiry, signature = session["Cookie"].split("=", 1)[1].split(".")
    for forged in (f"{int(expiry) + 1}.{signature}", f"{expiry}.{signature[:-2]}AA", "x.y", ""):
        assert refusal(port, "/playground", {"Cookie": f"{SESSION_COOKIE}={forged}"})[0] == 401


@pytest.mark.xdist_group("realtime")  # ci/test.sh runs these one at a time
@pytest.mark.parametrize("mode", ["ws", "webrtc"])
def test_chromium_signs_in_once_then_the_playground_talks(tmp_path, agent_server, token, mode):
    """The token in the first URL only: the page, its WebSocket or its WebRTC offer (and the
    companion's own connection behind it) go on with the session."""
    need_chromium()
    webrtc = {"webrtc": "auto", "webrtc_companions": 1} if mode == "webrtc" else {}
    server = agent_server(echo_config(tmp_path, access_token_env="TEST_ACCESS_TOKEN", **webrtc))
    if mode == "webrtc":
        assert wait_until(lambda: server.gateway.status()["running"], 60)
    with Chromium() as browser:
        page = browser.open(
            f"http://127.0.0.1:{server.port}/?access_token={TOKEN}&autostart={mode}"
        )
        try:
            assert wait_until(lambda: page.evaluate("window.playground?.state") == "connected", 30)
            assert page.evaluate("location.search") == f"?autostart={mode}"  # the token is gone
            assert wait_until(page.poll("playground.receivedSamples > 16000"), 30)  # the echo
        finally:
            print(page.report())
        page.evaluate("playground.stop()")
        assert page.errors == []
    assert wait_until(lambda: server.runtime.calls == [], 30)
    assert wait_until(lambda: server.runtime.pool.in_use == 0)


def test_a_session_ends_when_it_expires():
    now = [1_000_000.0]
    access = AccessToken(TOKEN, session_secs=60, clock=lambda: now[0])
    headers = websockets.datastructures.Headers
    opened = HttpRequest("GET", "/", {"access_token": TOKEN}, headers(Accept="text/html"))
    signed_in = access.check(opened)
    cookie = signed_in.headers["Set-Cookie"].split(";")[0]
    page = HttpRequest("GET", "/", {}, headers(Cookie=cookie))
    assert access.check(page) is None
    now[0] += 61
    assert access.check(page).status == 401


def test_an_access_token_shorter_than_16_characters_is_refused():
    with pytest.raises(ValueError, match="at least 16 characters"):
        AccessToken("short")


def test_webrtc_offers_need_the_token_and_are_rate_limited(tmp_path, agent_server, token):
    cfg = echo_config(
        tmp_path,
        "limits: {offers_per_minute: 8}\n",
        access_token_env="TEST_ACCESS_TOKEN",
        webrtc="auto",
        webrtc_companions=1,
    )
    server = agent_server(cfg)
    port, bearer = server.port, {"Authorization": f"Bearer {TOKEN}"}
    assert request(port, "/webrtc/offer", method="POST", body=b"{}").status == 401
    statuses = [
        request(port, "/webrtc/offer", bearer, "POST", b"not json").status for _ in range(2)
    ]
    # A burst of two (a quarter of 8 a minute), the refused offer's among them: the limit
    # comes before the token is checked, so guessing tokens is limited too.
    assert statuses == [400, 429]
    limited = request(port, "/webrtc/offer", bearer, "POST", b"not json")
    assert b"too many requests to /webrtc/offer from 127.0.0.1: at most 8 a minute" in (
        limited.body
    )
    assert int(limited.headers["Retry-After"]) > 0
    # The companion connected through the token check with its own token.
    status = json.loads(request(port, "/status.json", bearer).body)
    assert wait_until(
        lambda: json.loads(request(port, "/status.json", bearer).body)["webrtc"]["running"], 60
    ), status


# -- TLS -----------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_serves_https_and_wss(tmp_path, agent_server, token):
    cert, key = self_signed(tmp_path)
    server = agent_server(
        echo_config(
            tmp_path, access_token_env="TEST_ACCESS_TOKEN", tls_cert=str(cert), tls_key=str(key)
        )
    )
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert asyncio.run(echo(server.port, "/playground", bearer, "wss", ssl=context)) == PCM
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context)
    connection.request("GET", f"/?access_token={TOKEN}", headers={"Accept": "text/html"})
    signed_in = connection.getresponse()
    assert signed_in.status == 303 and "Secure" in signed_in.headers["Set-Cookie"]
    assert server.urls()["playground"].startswith("https://")
    assert server.urls()["raw"].startswith("wss://")
    with pytest.raises(http.client.RemoteDisconnected):  # plain http is not served
        request(server.port, "/health")


# -- the configuration's mistakes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "env", "message"),
    [
        (
            "access_token_env: NOT_SET_ANYWHERE",
            {},
            "server.access_token_env: the environment variable NOT_SET_ANYWHERE (the access "
            "token) is not set",
        ),
        (
            "access_token_env: SHORT_TOKEN",
            {"SHORT_TOKEN": "abc"},
            "server.access_token_env: the token in SHORT_TOKEN is 3 characters: it needs at "
            "least 16",
        ),
        (
            "access_token_env: 'my secret token'",
            {},
            "server.access_token_env: expected the name of an environment variable",
        ),
        ("tls_cert: cert.pem", {}, "server.tls_cert: needs server.tls_key too"),
        (
            "tls_cert: nowhere.pem, tls_key: nowhere.pem",
            {},
            "server.tls_cert: cannot load the certificate and key: No such file or directory",
        ),
        (
            "trusted_proxies: [10.0.0.1, proxy.example]",
            {},
            "server.trusted_proxies: 'proxy.example' is not an IP address or network",
        ),
    ],
)
def test_access_mistakes_are_named(tmp_path, monkeypatch, server, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "agent.yaml"
    path.write_text(f"server: {{{server}}}\nagent: {{kind: echo}}\n")
    with pytest.raises(ConfigError) as mistake:
        load_config(path)
    assert f"{path}:1: {message}" in str(mistake.value)


def test_limits_per_client_are_bounded(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("limits: {connections_per_client: 0, handshake_timeout: 0}\n")
    with pytest.raises(ConfigError) as mistake:
        load_config(path)
    assert "limits.connections_per_client: must be at least 1, got 0" in str(mistake.value)
    assert "limits.handshake_timeout: must be more than 0, got 0" in str(mistake.value)
