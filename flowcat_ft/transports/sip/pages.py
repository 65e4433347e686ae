"""HTTP endpoints to place, hang up and transfer SIP calls, behind a bearer token.

``POST /sip/calls`` with ``{"to": "sip:+15551234@trunk.example.com"}`` (and optionally
``"from"``, the user part of our From) dials and answers, once the call is answered,
``200 {"call_id": ...}``, or the status the far end gave (``486``, ``408``...) with
``{"error": "486 Busy Here"}``. ``POST /sip/hangup`` and ``POST /sip/transfer`` take
``{"call_id": ...}`` (and ``"to"``, the transfer target). Placing calls costs money: the
pages are served only with a token, which each request must carry as ``Authorization:
Bearer <token>`` (403 otherwise).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from flowcat_ft.sip.message import SipError
from flowcat_ft.transports.http import HttpRequest, HttpResponse, PageHandler
from flowcat_ft.transports.sip.server import CallFailed

if TYPE_CHECKING:
    from flowcat_ft.transports.sip.server import SipServer

__all__ = ["call_pages"]


def call_pages(sip: SipServer, token: str) -> dict[str, PageHandler]:
    """The pages, for a :class:`~flowcat_ft.transports.server.WebSocketServer`."""

    async def dial(body: dict) -> HttpResponse:
        to = body.get("to")
        if not isinstance(to, str):
            return HttpResponse.json({"error": "give the number to call as 'to'"}, 400)
        try:
            future = sip.dial(to, from_user=str(body.get("from") or "agent"))
            call = await asyncio.wrap_future(future)
        except SipError as error:
            return HttpResponse.json({"error": f"bad URI: {error.reason}"}, 400)
        except CallFailed as failed:
            status = failed.status if 400 <= failed.status < 600 else 502
            return HttpResponse.json({"error": str(failed)}, status)
        except OSError as error:
            return HttpResponse.json({"error": f"cannot reach {to}: {error}"}, 502)
        return HttpResponse.json({"call_id": call.call_id})

    async def hang_up(body: dict) -> HttpResponse:
        if not isinstance(body.get("call_id"), str):
            return HttpResponse.json({"error": "give the call's 'call_id'"}, 400)
        sip.hang_up(body["call_id"])
        return HttpResponse.json({"call_id": body["call_id"]})

    async def transfer(body: dict) -> HttpResponse:
        call_id, to = body.get("call_id"), body.get("to")
        if not isinstance(call_id, str) or not isinstance(to, str):
            return HttpResponse.json({"error": "give 'call_id' and the target as 'to'"}, 400)
        try:
            done = await asyncio.wrap_future(sip.transfer(call_id, to))
        except KeyError:
            return HttpResponse.json({"error": f"no call {call_id}"}, 404)
        return HttpResponse.json({"call_id": call_id, "transferred": done})

    return {
        "/sip/calls": _guarded(token, dial),
        "/sip/hangup": _guarded(token, hang_up),
        "/sip/transfer": _guarded(token, transfer),
    }


def _guarded(
    token: str, handler: Callable[[dict], Awaitable[HttpResponse]]
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    async def page(request: HttpRequest) -> HttpResponse:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return HttpResponse.json({"error": "a valid bearer token is needed"}, 403)
        if request.method != "POST":
            return HttpResponse.json({"error": "POST a JSON object"}, HTTPStatus.METHOD_NOT_ALLOWED)
        try:
            body = request.json()
        except ValueError:
            return HttpResponse.json({"error": "the body is not JSON"}, 400)
        if not isinstance(body, dict):
            return HttpResponse.json({"error": "the body is not a JSON object"}, 400)
        return await handler(body)

    return page
