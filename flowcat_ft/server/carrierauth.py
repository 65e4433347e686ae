"""Guards that let only the carrier through: its signed webhooks, its stream handshakes.

Each ``*_guards`` function returns guards by path
(:data:`~flowcat_ft.transports.http.Guard`) for a carrier's webhook answer,
``/<carrier>/answer``, and where the carrier signs or authenticates it, its stream
handshake, ``/<carrier>``; :mod:`~flowcat_ft.server.signatures` says how each carrier signs.
A refused request is answered before any page runs or any call opens: 403 with the reason
(``wrong X-Twilio-Signature``), or 401 asking for credentials (Exotel's basic auth).

A signed request is accepted once: its nonce, signature or JWT id is remembered
(:class:`~flowcat_ft.server.signatures.ReplayMemory`) for as long as the request could be
accepted, the tolerance on its timestamp, or for Twilio and Plivo, whose signatures carry
no time, :data:`UNTIMED_REPLAY_SECS`. Stream handshakes are not held to that: a stream is
opened once per call and its URL's token is what admits it
(:mod:`~flowcat_ft.server.streamtokens`).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

from ecdsa import VerifyingKey

from flowcat_ft.server.signatures import (
    ReplayMemory,
    SignatureError,
    address_allowed,
    telnyx_timestamp,
    verify_basic_auth,
    verify_plivo,
    verify_telnyx,
    verify_twilio,
    verify_vonage,
    vonage_payload_hash,
)
from flowcat_ft.server.webhooks import request_url
from flowcat_ft.transports.http import Guard, HttpRequest, HttpResponse

__all__ = [
    "UNTIMED_REPLAY_SECS",
    "all_of",
    "exotel_guards",
    "merge",
    "plivo_guards",
    "telnyx_guards",
    "twilio_guards",
    "vonage_guards",
]

UNTIMED_REPLAY_SECS = 24 * 3600.0
"""How long a Twilio or Plivo signature is remembered to refuse its repeat."""

Clock = Callable[[], float]


def twilio_guards(
    auth_token: str,
    public_url: str | None = None,
    replays: ReplayMemory | None = None,
    clock: Clock = time.time,
) -> dict[str, Guard]:
    """``/twilio/answer`` and the ``/twilio`` handshake: ``X-Twilio-Signature`` over the
    URL as Twilio requested it (``public_url``, or the proxy's headers, say where that
    is) and a POST's form."""
    replays = replays or ReplayMemory()

    def guard(request: HttpRequest) -> HttpResponse | None:
        signature = request.headers.get("X-Twilio-Signature", "")
        params = request.form() if request.method == "POST" else {}
        try:
            verify_twilio(auth_token, request_url(request, public_url), params, signature)
        except SignatureError as refused:
            return _forbidden(str(refused))
        if _is_handshake(request):
            return None
        return _once(replays, f"twilio {signature}", clock(), UNTIMED_REPLAY_SECS)

    return {"/twilio/answer": guard, "/twilio": guard}


def plivo_guards(
    auth_token: str,
    public_url: str | None = None,
    replays: ReplayMemory | None = None,
    clock: Clock = time.time,
) -> dict[str, Guard]:
    """``/plivo/answer``: ``X-Plivo-Signature-V3`` with its nonce, over the URL as Plivo
    requested it and a POST's form."""
    replays = replays or ReplayMemory()

    def guard(request: HttpRequest) -> HttpResponse | None:
        nonce = request.headers.get("X-Plivo-Signature-V3-Nonce", "")
        params = request.form() if request.method == "POST" else {}
        try:
            verify_plivo(
                auth_token,
                request.method,
                request_url(request, public_url),
                params,
                nonce,
                request.headers.get("X-Plivo-Signature-V3", ""),
            )
        except SignatureError as refused:
            return _forbidden(str(refused))
        return _once(replays, f"plivo {nonce}", clock(), UNTIMED_REPLAY_SECS)

    return {"/plivo/answer": guard}


def telnyx_guards(
    public_key: VerifyingKey,
    tolerance: float = 300.0,
    replays: ReplayMemory | None = None,
    clock: Clock = time.time,
) -> dict[str, Guard]:
    """``/telnyx/answer``: ``telnyx-signature-ed25519`` over ``timestamp|body``, the
    timestamp within ``tolerance`` seconds. The Ed25519 check (milliseconds of CPU) runs
    on a worker thread, not the event loop."""
    replays = replays or ReplayMemory()

    async def guard(request: HttpRequest) -> HttpResponse | None:
        timestamp = request.headers.get("telnyx-timestamp", "")
        signature = request.headers.get("telnyx-signature-ed25519", "")
        now = clock()
        try:
            telnyx_timestamp(timestamp, now, tolerance)  # the cheap refusals first
            await asyncio.to_thread(
                verify_telnyx, public_key, timestamp, request.body, signature, now, tolerance
            )
        except SignatureError as refused:
            return _forbidden(str(refused))
        return _once(replays, f"telnyx {signature}", now, tolerance)

    return {"/telnyx/answer": guard}


def vonage_guards(
    signature_secret: str,
    tolerance: float = 300.0,
    replays: ReplayMemory | None = None,
    clock: Clock = time.time,
) -> dict[str, Guard]:
    """``/vonage/answer``: a JWT signed with the signature secret in ``Authorization``,
    issued within ``tolerance`` seconds, whose ``payload_hash`` is the request's."""
    replays = replays or ReplayMemory()

    def guard(request: HttpRequest) -> HttpResponse | None:
        authorization = request.headers.get("Authorization", "")
        query = _query_in_order(request.target)
        payload_hash = vonage_payload_hash(request.method, query, request.body)
        now = clock()
        try:
            claims = verify_vonage(signature_secret, authorization, payload_hash, now, tolerance)
        except SignatureError as refused:
            return _forbidden(str(refused))
        return _once(replays, f"vonage {claims.get('jti') or authorization}", now, tolerance)

    return {"/vonage/answer": guard}


def exotel_guards(
    username: str | None = None,
    password: str | None = None,
    allow_from: Iterable[str] = (),
) -> dict[str, Guard]:
    """``/exotel/answer`` and the ``/exotel`` handshake: HTTP basic auth with these
    credentials (where given) and a peer address in ``allow_from`` (where given: IP
    addresses or networks, ``203.0.113.0/24``)."""
    networks = [ipaddress.ip_network(entry, strict=False) for entry in allow_from]

    def guard(request: HttpRequest) -> HttpResponse | None:
        if networks and not address_allowed(request.client, networks):
            return _forbidden(f"requests from {request.client or 'this address'} are not allowed")
        if username is not None and password is not None:
            try:
                verify_basic_auth(request.headers.get("Authorization", ""), username, password)
            except SignatureError as refused:
                answer = HttpResponse.error(HTTPStatus.UNAUTHORIZED, str(refused))
                answer.headers["WWW-Authenticate"] = 'Basic realm="flowcat-ft"'
                return answer
        return None

    return {"/exotel/answer": guard, "/exotel": guard}


def all_of(guards: Iterable[Guard]) -> Guard:
    """One guard that lets a request through only if each of ``guards`` does, asking
    them in order and answering with the first refusal."""
    guards = tuple(guards)

    async def guard(request: HttpRequest) -> HttpResponse | None:
        for each in guards:
            refusal = each(request)
            if inspect.isawaitable(refusal):
                refusal = await refusal
            if refusal is not None:
                return refusal
        return None

    return guards[0] if len(guards) == 1 else guard


def merge(*guard_sets: Mapping[str, Guard]) -> dict[str, Guard]:
    """Guards by path from several sets, those for one path joined by :func:`all_of`."""
    by_path: dict[str, list[Guard]] = {}
    for guards in guard_sets:
        for path, guard in guards.items():
            by_path.setdefault(path, []).append(guard)
    return {path: all_of(guards) for path, guards in by_path.items()}


def _once(replays: ReplayMemory, key: str, now: float, ttl: float) -> HttpResponse | None:
    if replays.first_time(key, now, ttl):
        return None
    return _forbidden("replayed request: this signature was accepted before")


def _forbidden(reason: str) -> HttpResponse:
    return HttpResponse.error(HTTPStatus.FORBIDDEN, reason)


def _is_handshake(request: HttpRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _query_in_order(target: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(target).query, keep_blank_values=True)
