"""Guards and start checks: what the server refuses before a call opens."""

from __future__ import annotations

import asyncio
import contextlib
import http.client

import websockets
from carrier_messages import payloads, receive_until, twilio_media, twilio_start
from helpers import wait_until

from flowcat_ft.transports.http import HttpRequest, HttpResponse


def handshake(port: int, path: str, messages: list[str] = (), **headers) -> int | list[bytes]:
    """The HTTP status that refused the handshake, or the audio echoed back (read until
    as many frames came back as ``messages`` carry)."""
    sent = len(payloads(messages))

    async def run() -> int | list[bytes]:
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{port}{path}", additional_headers=headers
            ) as ws:
                for message in messages:
                    await ws.send(message)
                replies = await receive_until(
                    ws, lambda got: len(payloads(got)) >= sent, f"the echo of {sent} frames"
                )
        except websockets.InvalidStatus as refused:
            return refused.response.status_code
        return payloads(replies)

    return asyncio.run(run())


def closed_with(port: int, path: str, messages: list[str]) -> tuple[int, str]:
    """How the server closed a connection that sent ``messages``."""

    async def run() -> tuple[int, str]:
        async with websockets.connect(f"ws://127.0.0.1:{port}{path}") as ws:
            with contextlib.suppress(websockets.ConnectionClosed):  # it may close first
                for message in messages:
                    await ws.send(message)
            await asyncio.wait_for(ws.wait_closed(), 10)
            return ws.close_code, ws.close_reason

    return asyncio.run(run())


AUDIO = [b"\x55" * 160] * 3
CALL = [twilio_start(call="CA1"), *(twilio_media(frame, n) for n, frame in enumerate(AUDIO))]


def test_a_media_route_serves_the_paths_one_segment_below_it(serve):
    server = serve()
    assert handshake(server.port, "/twilio/some-token", CALL) == AUDIO
    code, reason = closed_with(server.port, "/twilio/a/b", CALL)
    assert (code, reason.split(";")[0]) == (1008, "no media stream at /twilio/a/b")
    page = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    page.request("GET", "/twilio/some-token")  # not a handshake: no page there
    assert page.getresponse().status == 404
    page.close()


def test_a_media_routes_guard_runs_for_the_paths_below_it(serve):
    seen: list[HttpRequest] = []

    def guard(request: HttpRequest) -> HttpResponse | None:
        seen.append(request)
        if request.path.endswith("/good"):
            return None
        return HttpResponse.error(403, "no entry")

    server = serve(guards={"/twilio": guard})
    assert handshake(server.port, "/twilio", CALL) == 403
    assert handshake(server.port, "/twilio/bad", CALL) == 403
    assert handshake(server.port, "/twilio/good", CALL) == AUDIO
    assert [r.path for r in seen] == ["/twilio", "/twilio/bad", "/twilio/good"]
    assert {r.client for r in seen} == {"127.0.0.1"}
    # Only the good one opened a call.
    assert wait_until(lambda: server.runtime.metrics()["calls"]["ended"] == 1)
    assert server.runtime.calls == []


def test_a_guard_may_do_its_work_elsewhere_and_answer_later(serve):
    async def guard(request: HttpRequest) -> HttpResponse | None:
        await asyncio.sleep(0.01)
        return None if "X-Ok" in request.headers else HttpResponse.error(403, "no X-Ok")

    server = serve(guards={"/twilio": guard})
    assert handshake(server.port, "/twilio", CALL) == 403
    assert handshake(server.port, "/twilio", CALL, **{"X-Ok": "1"}) == AUDIO


def test_a_start_check_refuses_a_stream_before_its_call_opens(serve):
    def check(target: str, start) -> str | None:
        return None if target.endswith("/" + start.call_id) else "the stream is for another call"

    server = serve(start_checks={"/twilio": check}, slabs=64)
    assert closed_with(server.port, "/twilio/CA2", CALL) == (1008, "the stream is for another call")
    assert server.runtime.calls == []
    assert server.runtime.metrics()["calls"]["ended"] == 0  # no call was ever opened
    assert wait_until(lambda: server.runtime.pool.in_use == 0)
    assert handshake(server.port, "/twilio/CA1", CALL) == AUDIO
