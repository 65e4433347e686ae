"""Carrier webhook answers: what a carrier fetches when a call comes in.

A phone number at a carrier points at an answer URL; the carrier fetches it (GET or POST)
when a call arrives and the answer tells it to stream the call's audio to this server:

- Twilio: TwiML ``<Connect><Stream>`` (bidirectional), with the caller's numbers as
  ``<Parameter>`` s that come back in the stream's start message;
- Telnyx: TeXML ``<Start><Stream bidirectionalMode="rtp">`` and a long ``<Pause>`` that
  keeps the call up while it streams;
- Plivo: Plivo XML ``<Stream bidirectional="true" keepCallAlive="true">``, with
  ``extraHeaders``;
- Vonage: an NCCO ``connect`` action to a ``websocket`` endpoint (16 kHz L16), with
  ``headers``;
- Exotel: the Voicebot applet's dynamic URL answer, ``{"url": "wss://..."}``.

Each lives at ``/<carrier>/answer``. The stream URL is built from ``public_url`` when the
server knows it, else from the request's ``Host`` (and ``X-Forwarded-Proto`` /
``X-Forwarded-Host``, set by TLS-terminating proxies and tunnels).

:func:`twilio_guards` verifies that requests come from Twilio: Twilio signs each webhook
and each media stream's WebSocket handshake with the account's auth token
(``X-Twilio-Signature``: base64 HMAC-SHA1 of the URL it requested, followed by a POST's
form fields sorted by name, each name then value). The URL is rebuilt the way
:func:`stream_url` builds it, so ``public_url`` (or the proxy's headers) must say where
Twilio reaches the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from flowcat_ft.transports.http import Guard, HttpRequest, HttpResponse, PageHandler

__all__ = ["answer_pages", "stream_url", "twilio_guards", "twilio_signature"]

_XML = "application/xml; charset=utf-8"
_KEEP_ALIVE_SECS = 14400  # Telnyx: <Pause> for the longest call we expect to carry


def stream_url(request: HttpRequest, path: str, public_url: str | None = None) -> str:
    """The ``ws(s)://`` URL of the media route ``path`` as the carrier can reach it."""
    secure, host = _public_origin(request, public_url)
    return f"{'wss' if secure else 'ws'}://{host}{path}"


def _public_origin(request: HttpRequest, public_url: str | None) -> tuple[bool, str]:
    """Whether the carrier reaches us over TLS, and at which host."""
    if public_url:
        base = urlsplit(public_url)
        return base.scheme in ("https", "wss"), base.netloc
    headers = request.headers
    proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    host = headers.get("X-Forwarded-Host") or headers.get("Host", "localhost")
    return proto in ("https", "wss"), host


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """What Twilio sends as ``X-Twilio-Signature`` for a request to ``url`` with the form
    fields ``params`` (none for a GET or a WebSocket handshake)."""
    signed = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twilio_guards(auth_token: str, public_url: str | None = None) -> dict[str, Guard]:
    """Guards for ``/twilio/answer`` and ``/twilio`` that refuse (403) a request whose
    ``X-Twilio-Signature`` is missing or wrong."""

    def guard(request: HttpRequest) -> HttpResponse | None:
        secure, host = _public_origin(request, public_url)
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        scheme = ("wss" if secure else "ws") if websocket else ("https" if secure else "http")
        url = f"{scheme}://{host}{request.target or request.path}"
        params = request.form() if request.method == "POST" else {}
        expected = twilio_signature(auth_token, url, params)
        if hmac.compare_digest(expected, request.headers.get("X-Twilio-Signature", "")):
            return None
        return HttpResponse.error(HTTPStatus.FORBIDDEN, "missing or wrong X-Twilio-Signature")

    return {"/twilio/answer": guard, "/twilio": guard}


def _caller(form: Mapping[str, str], *names: tuple[str, str]) -> dict[str, str]:
    """The call's identity from the webhook's form, under our names: ``from``, ``to``..."""
    return {ours: form[theirs] for ours, theirs in names if form.get(theirs)}


def _twilio(url: str, form: Mapping[str, str]) -> HttpResponse:
    caller = _caller(form, ("call_sid", "CallSid"), ("from", "From"), ("to", "To"))
    parameters = "".join(
        f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in caller.items()
    )
    twiml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(url)}>{parameters}</Stream></Connect>"
        "</Response>"
    )
    return HttpResponse(HTTPStatus.OK, twiml, _XML)


def _telnyx(url: str, form: Mapping[str, str]) -> HttpResponse:
    texml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<Response><Start><Stream url={quoteattr(url)} track="inbound_track" '
        'bidirectionalMode="rtp" bidirectionalCodec="PCMU"/></Start>'
        f'<Pause length="{_KEEP_ALIVE_SECS}"/></Response>'
    )
    return HttpResponse(HTTPStatus.OK, texml, _XML)


def _plivo(url: str, form: Mapping[str, str]) -> HttpResponse:
    caller = _caller(form, ("call_uuid", "CallUUID"), ("from", "From"), ("to", "To"))
    headers = ",".join(f"{k}={v}" for k, v in caller.items() if "," not in v and "=" not in v)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Response><Stream bidirectional="true" keepCallAlive="true" '
        f'contentType="audio/x-mulaw;rate=8000" extraHeaders={quoteattr(headers)}>'
        f"{escape(url)}</Stream></Response>"
    )
    return HttpResponse(HTTPStatus.OK, xml, _XML)


def _vonage(url: str, form: Mapping[str, str]) -> HttpResponse:
    caller = _caller(form, ("uuid", "uuid"), ("from", "from"), ("to", "to"))
    endpoint = {
        "type": "websocket",
        "uri": url,
        "content-type": "audio/l16;rate=16000",
        "headers": caller,
    }
    return HttpResponse.json([{"action": "connect", "endpoint": [endpoint]}])


def _exotel(url: str, form: Mapping[str, str]) -> HttpResponse:
    return HttpResponse.json({"url": url})


_ANSWERS: dict[str, Callable[[str, Mapping[str, str]], HttpResponse]] = {
    "twilio": _twilio,
    "telnyx": _telnyx,
    "plivo": _plivo,
    "vonage": _vonage,
    "exotel": _exotel,
}


def answer_pages(carriers: Iterable[str], public_url: str | None = None) -> dict[str, PageHandler]:
    """``/<carrier>/answer`` pages for those of ``carriers`` that have a webhook (every
    carrier but ``raw``), each pointing the carrier at ``/<carrier>``."""

    def page(carrier: str) -> PageHandler:
        answer = _ANSWERS[carrier]

        def handle(request: HttpRequest) -> HttpResponse:
            return answer(stream_url(request, f"/{carrier}", public_url), request.form())

        return handle

    return {f"/{name}/answer": page(name) for name in carriers if name in _ANSWERS}
