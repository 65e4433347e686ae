"""Plain HTTP pages and extra WebSocket endpoints on the media port."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading

import websockets
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from flowcat_ft.transports.http import MAX_BODY_BYTES, HttpRequest, HttpResponse


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        return reply.status, reply.getheader("Content-Type"), reply.read()
    finally:
        connection.close()


def echo_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse.json({"method": request.method, "form": request.form()})


async def slow_page(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0.01)
    return HttpResponse(body=b"\x00\x01", content_type="application/octet-stream")


def broken_page(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("bug in a page")


PAGES = {"/echo": echo_page, "/slow": slow_page, "/broken": broken_page}


def test_get_and_post_forms_reach_the_page(serve):
    server = serve(pages=PAGES)
    status, kind, body = request(server.port, "GET", "/echo?CallSid=CA1&From=%2B1555")
    assert (status, kind) == (200, "application/json")
    assert body == b'{"method":"GET","form":{"CallSid":"CA1","From":"+1555"}}'
    form = b"CallSid=CA2&To=%2B1444&Empty="
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = request(server.port, "POST", "/echo", form, headers)
    assert status == 200
    assert body == b'{"method":"POST","form":{"CallSid":"CA2","To":"+1444","Empty":""}}'


def test_a_post_body_split_across_packets_is_read_whole(serve):
    server = serve(pages=PAGES)
    form = b"a=" + b"x" * 20000
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % len(form)
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for piece in (head[:7], head[7:], form[:100], form[100:]):
            sock.sendall(piece)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.endswith(b'"a":"' + b"x" * 20000 + b'"}}')


def test_async_pages_and_binary_bodies(serve):
    server = serve(pages=PAGES)
    assert request(server.port, "GET", "/slow") == (200, "application/octet-stream", b"\x00\x01")


def test_bad_requests_get_clear_answers_and_the_server_goes_on(serve):
    server = serve(pages=PAGES)
    assert request(server.port, "GET", "/nowhere")[0] == 404
    assert request(server.port, "POST", "/nowhere", b"x=1")[0] == 404
    too_big = b"x" * (MAX_BODY_BYTES + 1)
    assert request(server.port, "POST", "/echo", too_big)[0] == 413
    chunked = {"Transfer-Encoding": "chunked"}  # http.client sends the body in chunks
    assert request(server.port, "POST", "/echo", iter([b"x=1"]), chunked)[0] == 411
    assert request(server.port, "GET", "/broken")[:2] == (500, "text/plain; charset=utf-8")
    assert request(server.port, "GET", "/twilio")[0] == 426  # a media stream wants a WebSocket
    assert request(server.port, "GET", "/health")[2] == b"ok\n"


def test_other_websocket_endpoints_beside_the_media_streams(serve):
    async def shout(ws) -> None:
        async for message in ws:
            await ws.send(message.upper())

    server = serve(sockets={"/shout": shout})

    async def talk() -> str:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/shout") as ws:
            await ws.send("hello")
            return await ws.recv()

    assert asyncio.run(talk()) == "HELLO"


def test_other_endpoints_do_not_hold_up_a_shutdown(serve):
    """Only calls get the grace period; a link that never closes by itself does not."""
    opened = threading.Event()

    async def idle(ws) -> None:
        opened.set()
        await ws.wait_closed()

    server = serve(sockets={"/idle": idle})

    def client() -> None:
        url = f"ws://127.0.0.1:{server.port}/idle"
        with connect(url) as ws, contextlib.suppress(ConnectionClosed):
            ws.recv()

    link = threading.Thread(target=client)
    link.start()
    assert opened.wait(5)
    stopping = threading.Thread(target=server.stop, kwargs={"grace": 60})
    stopping.start()
    stopping.join(30)  # far short of the grace
    assert not stopping.is_alive()
    link.join(5)
    assert not link.is_alive()
