"""Stream tokens: short-lived credentials that take a call from its webhook to its stream.

A carrier fetches the call's webhook answer (whose request the carrier signs, see
:mod:`~flowcat_ft.server.signatures`) and then opens the media stream the answer names.
Most carriers do not sign that WebSocket handshake, so the answer puts a token in the
stream's URL and the handshake is refused (403) without a valid, unexpired one for that
carrier, before any call is opened.

The token travels as the URL's last path segment, ``wss://agent.example.com/twilio/<token>``,
the one part of a URL every carrier keeps: Twilio drops a ``<Stream>`` URL's query string
(its ``<Parameter>`` values arrive in the start message, after the handshake), Exotel
passes at most three query parameters, and Telnyx, Plivo and Vonage connect to the URL
as written. A token reads ``<carrier>.<expiry>.<call>.<mac>``: the expiry in Unix
seconds, the carrier's call id in base64url, and the first 16 bytes of
HMAC-SHA256(key, carrier, expiry, call id) in base64url.

The call id binds the token to one call: once the handshake is through, the carrier's
start message names its call, and a stream whose call is not the token's closes (1008)
before its call opens (:meth:`StreamTokens.start_checks`). A token with no call id admits
any call of its carrier, for a stream started without a webhook (a carrier's REST API or a
URL typed into its console): ``flowcat-ft stream-url`` makes one, valid as long as asked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from flowcat_ft.serializers import StreamStarted
from flowcat_ft.transports.http import Guard, HttpRequest, HttpResponse
from flowcat_ft.transports.server import StartCheck

__all__ = ["StreamGrant", "StreamTokenError", "StreamTokens"]

_MAC_BYTES = 16
_MAX_TOKEN_CHARS = 512  # a call id of a few hundred characters still fits


class StreamTokenError(ValueError):
    """Why a stream token was refused, in words that may be sent to the peer."""


@dataclass(frozen=True)
class StreamGrant:
    """What a valid token admits: a stream of ``carrier`` for the call ``call_id`` (empty:
    any of its calls) until ``expires`` (Unix seconds)."""

    carrier: str
    call_id: str
    expires: int


class StreamTokens:
    """Issues and checks stream tokens signed with ``key`` (random if not given: tokens
    then die with the process), valid ``ttl`` seconds from their webhook answer by
    default. Holds no state that changes: any thread may use it."""

    def __init__(
        self,
        key: bytes | None = None,
        ttl: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key or secrets.token_bytes(32)
        self.ttl = ttl
        self._clock = clock

    def issue(self, carrier: str, call_id: str = "", ttl: float | None = None) -> str:
        """A token for a stream of ``carrier`` for the call ``call_id`` (empty: any of its
        calls), valid ``ttl`` seconds (the default ttl if None)."""
        expires = int(self._clock() + (self.ttl if ttl is None else ttl))
        call = _b64(call_id.encode())
        return f"{carrier}.{expires}.{call}.{_b64(self._mac(carrier, expires, call_id))}"

    def check(self, carrier: str, token: str) -> StreamGrant:
        """The grant of a token presented on ``carrier``'s stream route; raises
        :class:`StreamTokenError` saying why it is not valid there."""
        grant = self._signed_grant(carrier, token)
        if grant.expires < self._clock():
            raise StreamTokenError("the stream token has expired")
        return grant

    def _signed_grant(self, carrier: str, token: str) -> StreamGrant:
        """The grant of a token signed with our key for ``carrier``, expired or not."""
        parts = token.split(".") if len(token) <= _MAX_TOKEN_CHARS else []
        if len(parts) != 4 or not parts[1].isdigit():
            raise StreamTokenError("malformed stream token")
        issued_for, expires, call, mac = parts
        try:
            call_id = _unb64(call).decode()
            presented = _unb64(mac)
        except (binascii.Error, UnicodeDecodeError):
            raise StreamTokenError("malformed stream token") from None
        if issued_for != carrier:
            raise StreamTokenError(f"the stream token is for {issued_for}, not {carrier}")
        if not hmac.compare_digest(presented, self._mac(carrier, int(expires), call_id)):
            raise StreamTokenError("the stream token's signature is wrong")
        return StreamGrant(carrier, call_id, int(expires))

    def guards(self, carriers: Iterable[str]) -> dict[str, Guard]:
        """Guards for the ``/<carrier>`` stream routes that refuse (403) a handshake
        without a valid token for that carrier."""
        return {f"/{carrier}": self._guard(carrier) for carrier in carriers}

    def start_checks(self, carriers: Iterable[str]) -> dict[str, StartCheck]:
        """Start checks for the ``/<carrier>`` stream routes that refuse a stream whose
        start message names another call than its token (a carrier-wide token, or a
        start message that names no call, as Vonage's, is not compared)."""

        def check(carrier: str) -> StartCheck:
            def refuse(target: str, start: StreamStarted) -> str | None:
                token = _token_in(urlsplit(target).path, carrier)
                try:  # the handshake's guard checked it; it may have expired since
                    grant = self._signed_grant(carrier, token)
                except StreamTokenError as refused:
                    return str(refused)
                if grant.call_id and start.call_id and start.call_id != grant.call_id:
                    return "the stream token is for another call"
                return None

            return refuse

        return {f"/{carrier}": check(carrier) for carrier in carriers}

    def _guard(self, carrier: str) -> Guard:
        def guard(request: HttpRequest) -> HttpResponse | None:
            token = _token_in(request.path, carrier)
            if not token:
                return HttpResponse.error(
                    HTTPStatus.FORBIDDEN,
                    f"a {carrier} stream needs a token: connect to the stream URL that "
                    f"/{carrier}/answer gave, /{carrier}/<token>",
                )
            try:
                self.check(carrier, token)
            except StreamTokenError as refused:
                return HttpResponse.error(HTTPStatus.FORBIDDEN, str(refused))
            return None

        return guard

    def _mac(self, carrier: str, expires: int, call_id: str) -> bytes:
        message = "\0".join(("flowcat-stream-token", carrier, str(expires), call_id))
        return hmac.new(self._key, message.encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def _token_in(path: str, carrier: str) -> str:
    """The token segment of a stream route's path (``/twilio/<token>``), or empty."""
    return path.removeprefix(f"/{carrier}").removeprefix("/")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Base64url without padding; raises ``binascii.Error`` on any other character."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
