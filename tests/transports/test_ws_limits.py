"""Limits on what one client can ask of the server: the request head's size (414, 431),
connections being opened at once and handshake rates per client address (429), the
handshake timeout; clients behind a trusted proxy are told apart by X-Forwarded-For. The
arithmetic is tested as pure functions; the refusals on a real server, from several
loopback addresses (the whole of 127.0.0.0/8 is this machine)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import websockets
from carrier_messages import twilio_media, twilio_start
from helpers import wait_until
from websockets.datastructures import Headers

from flowcat_ft.transports.clients import TrustedProxies, client_key
from flowcat_ft.transports.http import MAX_HEAD_BYTES, MAX_TARGET_BYTES
from flowcat_ft.transports.limits import ClientLimits, Rate

# -- the arithmetic --------------------------------------------------------------------------


def test_a_rate_allows_its_burst_then_one_request_per_interval():
    limits = ClientLimits(rates={"handshake": Rate(per_minute=60, burst=3)})
    assert [limits.take("handshake", "a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limits.take("handshake", "a", now=100.0) == pytest.approx(1.0)  # 1 s to the next
    assert limits.take("handshake", "b", now=100.0) == 0.0  # another client has its own
    assert limits.take("handshake", "a", now=101.0) == 0.0
    assert limits.take("handshake", "a", now=101.5) == pytest.approx(0.5)
    assert limits.take("/page", "a", now=101.5) == 0.0  # no rate for this kind
    assert limits.stats()["refused"] == 2


def test_buckets_are_bounded_least_recently_used_first():
    limits = ClientLimits(rates={"handshake": Rate(60, 1)}, max_buckets=100)
    for n in range(1000):
        limits.take("handshake", f"10.0.{n // 256}.{n % 256}", now=0.0)
    assert limits.stats()["buckets"] == 100
    assert limits.take("handshake", "10.0.3.231", now=0.0) > 0  # kept: the most recent
    assert limits.take("handshake", "10.0.0.0", now=0.0) == 0.0  # dropped: a full bucket


def test_connections_are_counted_per_client_and_forgotten_at_zero():
    limits = ClientLimits(connections=2)
    assert limits.open("a") and limits.open("a") and not limits.open("a")
    assert limits.open("b")
    limits.close("a")
    assert limits.open("a")
    for client in ("a", "a", "b"):
        limits.close(client)
    assert limits.stats() == {"clients": 0, "connections": 0, "buckets": 0, "refused": 1}


def test_a_client_is_its_ipv4_address_or_its_ipv6_slash_64():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert (
        client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2::9") == ("2001:db8:1:2::/64")
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")


def forwarded(value: str, proto: str = "", host: str = "") -> Headers:
    headers = Headers({"X-Forwarded-For": value})
    if proto:
        headers["X-Forwarded-Proto"] = proto
    if host:
        headers["X-Forwarded-Host"] = host
    return headers


def test_forwarded_headers_are_believed_only_from_trusted_proxies():
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    spoofed = forwarded("1.1.1.1, 203.0.113.9, 10.0.0.2", "https", "agent.example.com")
    # right-most untrusted
    assert proxies.client("10.0.0.1", spoofed) == ("203.0.113.9", True, "agent.example.com")
    assert proxies.client("::1", forwarded("203.0.113.9")) == ("203.0.113.9", False, "")
    assert proxies.client("198.51.100.4", spoofed) == ("198.51.100.4", False, "")  # not a proxy
    assert proxies.client("198.51.100.4", Headers(), tls=True) == ("198.51.100.4", True, "")
    assert proxies.client("10.0.0.1", forwarded("garbage, 10.0.0.3")) == ("10.0.0.3", False, "")
    assert proxies.client("10.0.0.1", Headers()) == ("10.0.0.1", False, "")
    assert proxies.client("::ffff:10.0.0.1", forwarded("203.0.113.9"))[0] == "203.0.113.9"
    assert not TrustedProxies() and "127.0.0.1" not in TrustedProxies()


def test_a_trusted_proxy_that_is_not_an_address_is_named():
    with pytest.raises(ValueError, match=r"'proxy\.example' is not an IP address or network"):
        TrustedProxies(["10.0.0.1", "proxy.example"])


# -- on a real server ------------------------------------------------------------------------


def exchange(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    """Send ``request`` and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0)) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_long_request_line_is_414_and_a_large_head_431(serve):
    server = serve()
    long_path = b"/raw?x=" + b"a" * MAX_TARGET_BYTES
    answer = exchange(server.port, b"GET " + long_path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 414 and b"request line is over 8192 bytes" in answer
    cookie = b"Cookie: " + b"c" * 1000 + b"\r\n"
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + cookie * (MAX_HEAD_BYTES // 1000 + 1) + b"\r\n"
    answer = exchange(server.port, head)
    assert status_of(answer) == 431 and b"head is over 16384 bytes" in answer
    small = b"GET /health HTTP/1.1\r\nHost: x\r\n" + cookie * 10 + b"\r\n"
    assert status_of(exchange(server.port, small)) == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"", 411),
        (b"Transfer-Encoding: chunked\r\n", 411),
        (b"Content-Length: -1\r\n", 400),
        (b"Content-Length: 2\r\nContent-Length: 3\r\n", 400),
        (b"Content-Length: 99999999999999999999999\r\n", 400),
        (b"Content-Length: 70000\r\n", 413),
    ],
)
def test_a_post_body_of_no_usable_length_is_refused(serve, headers, status):
    server = serve(pages={"/form": lambda request: None})
    answer = exchange(server.port, b"POST /form HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_of(answer) == status


async def echo_one_frame(port: int, source: str = "127.0.0.1", **connect) -> bytes:
    url = f"ws://127.0.0.1:{port}/twilio"
    async with websockets.connect(url, local_addr=(source, 0), **connect) as ws:
        await ws.send(twilio_start())
        await ws.send(twilio_media(b"\x55" * 160, 0))
        return await asyncio.wait_for(ws.recv(), 5)


def test_connections_being_opened_are_limited_per_client_address(serve):
    server = serve(limits=ClientLimits(connections=5))
    idle = [
        socket.create_connection(("127.0.0.1", server.port), 5, source_address=("127.0.0.2", 0))
        for _ in range(5)
    ]
    try:
        assert wait_until(lambda: server.stats()["limits"]["connections"] == 5)
        answer = exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2")
        assert status_of(answer) == 429
        assert b"too many connections from 127.0.0.2: at most 5 at once" in answer
        assert asyncio.run(echo_one_frame(server.port))  # another address is served
        # Calls do not count: the limit is on connections that are not calls (yet).
        assert asyncio.run(echo_one_frame(server.port, "127.0.0.3"))
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: server.stats()["limits"]["clients"] == 0)
    assert status_of(exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


def test_handshakes_are_rate_limited_per_client_except_exempt_ones(serve):
    server = serve(
        limits=ClientLimits(rates={"handshake": Rate(per_minute=1, burst=3)}),
        exempt=lambda request: request.query.get("exempt") == "yes",
    )

    async def handshakes(source: str, path: str = "/twilio") -> tuple[list, str, str]:
        statuses, retry_after, body = [], "", ""
        for _ in range(4):
            try:
                url = f"ws://127.0.0.1:{server.port}{path}"
                async with websockets.connect(url, local_addr=(source, 0)):
                    statuses.append(None)
            except websockets.InvalidStatus as refused:
                statuses.append(refused.response.status_code)
                retry_after = refused.response.headers["Retry-After"]
                body = refused.response.body.decode()
        return statuses, retry_after, body

    statuses, retry_after, body = asyncio.run(handshakes("127.0.0.2"))
    assert statuses == [None, None, None, 429]
    assert 50 <= int(retry_after) <= 60
    assert "too many WebSocket handshakes from 127.0.0.2: at most 1 a minute" in body
    assert asyncio.run(echo_one_frame(server.port, "127.0.0.3"))
    assert asyncio.run(handshakes("127.0.0.2", "/twilio?exempt=yes"))[0] == [None] * 4


def test_behind_a_trusted_proxy_the_forwarded_client_is_limited(serve):
    server = serve(
        limits=ClientLimits(rates={"/health": Rate(per_minute=1, burst=1)}),
        proxies=TrustedProxies(["127.0.0.1"]),
    )

    def health(forwarded_for: str, source: str = "127.0.0.1") -> int:
        request = f"GET /health HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded_for}\r\n\r\n"
        return status_of(exchange(server.port, request.encode(), source))

    assert health("203.0.113.1") == 200
    assert health("203.0.113.1") == 429  # that client's one request a minute is spent
    assert health("203.0.113.2") == 200  # another client behind the same proxy
    assert health("203.0.113.3", source="127.0.0.2") == 200  # not a proxy: its own address
    assert health("203.0.113.4", source="127.0.0.2") == 429  # ...whatever it forwards


def test_a_handshake_not_done_in_time_is_dropped(serve):
    server = serve(limits=ClientLimits(connections=100), handshake_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port), 5) as slow:
        slow.sendall(b"GET /twilio HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        slow.settimeout(30)
        assert slow.recv(100) == b""  # closed by the server
    assert wait_until(lambda: server.stats()["limits"]["connections"] == 0)
