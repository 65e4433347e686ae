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
server knows it, else from the request's ``Host`` (or ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` from a TLS-terminating proxy named in ``server.trusted_proxies``;
anyone else's are ignored), and ends in a stream
token for the call the webhook names (:mod:`~flowcat_ft.server.streamtokens`):
``wss://agent.example.com/twilio/<token>``. A webhook that names no call is refused (400).
Whether a webhook comes from its carrier is for the guards of
:mod:`~flowcat_ft.server.carrierauth` to say, before the answer runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from flowcat_ft.server.streamtokens import StreamTokens
from flowcat_ft.transports.http import HttpRequest, HttpResponse, PageHandler

__all__ = ["CALL_ID_FIELDS", "answer_pages", "request_url", "stream_url"]

_XML = "application/xml; charset=utf-8"
_KEEP_ALIVE_SECS = 14400  # Telnyx: <Pause> for the longest call we expect to carry


def stream_url(request: HttpRequest, path: str, public_url: str | None = None) -> str:
    """The ``ws(s)://`` URL of the media route ``path`` as the carrier can reach it."""
    secure, host = _public_origin(request, public_url)
    return f"{'wss' if secure else 'ws'}://{host}{path}"


def request_url(request: HttpRequest, public_url: str | None = None) -> str:
    """The URL the carrier requested (``https://...`` for a page, ``wss://...`` for a
    handshake), rebuilt the way :func:`stream_url` builds it: what carriers sign."""
    secure, host = _public_origin(request, public_url)
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"
    scheme = ("wss" if secure else "ws") if websocket else ("https" if secure else "http")
    return f"{scheme}://{host}{request.target or request.path}"


def _public_origin(request: HttpRequest, public_url: str | None) -> tuple[bool, str]:
    """Whether the carrier reaches us over TLS, and at which host: the public URL, else the
    request's, as a trusted proxy says where one is in front (anyone else's
    ``X-Forwarded-*`` headers could point the carrier, and the signatures checked against
    these URLs, at another host)."""
    if public_url:
        base = urlsplit(public_url)
        return base.scheme in ("https", "wss"), base.netloc
    return request.secure, request.host or "localhost"


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


CALL_ID_FIELDS = {
    "twilio": "CallSid",
    "telnyx": "CallSid",  # TeXML's CallSid is the call_control_id its stream starts with
    "plivo": "CallUUID",
    "vonage": "uuid",
    "exotel": "CallSid",
}
"""The webhook field that names the call, by carrier: what its stream token is bound to."""

_ANSWERS: dict[str, Callable[[str, Mapping[str, str]], HttpResponse]] = {
    "twilio": _twilio,
    "telnyx": _telnyx,
    "plivo": _plivo,
    "vonage": _vonage,
    "exotel": _exotel,
}


def answer_pages(
    carriers: Iterable[str], tokens: StreamTokens, public_url: str | None = None
) -> dict[str, PageHandler]:
    """``/<carrier>/answer`` pages for those of ``carriers`` that have a webhook (every
    carrier but ``raw``), each pointing the carrier at ``/<carrier>/<token>``, the token
    from ``tokens`` for the call the webhook names."""

    def page(carrier: str) -> PageHandler:
        answer, call_field = _ANSWERS[carrier], CALL_ID_FIELDS[carrier]

        def handle(request: HttpRequest) -> HttpResponse:
            fields = _fields(request)
            if fields is None:
                return HttpResponse.error(HTTPStatus.BAD_REQUEST, "the body is not a JSON object")
            call_id = fields.get(call_field)
            if not call_id:
                return HttpResponse.error(
                    HTTPStatus.BAD_REQUEST, f"the webhook names no call: no {call_field}"
                )
            path = f"/{carrier}/{tokens.issue(carrier, call_id)}"
            return answer(stream_url(request, path, public_url), fields)

        return handle

    return {f"/{name}/answer": page(name) for name in carriers if name in _ANSWERS}


def _fields(request: HttpRequest) -> dict[str, str] | None:
    """The webhook's fields: a form's or a query's, or a JSON body's top level (Vonage
    posts JSON); None for a JSON body that is not an object."""
    if request.method != "POST" or "json" not in request.headers.get("Content-Type", ""):
        return request.form()
    try:
        body = request.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    return {k: str(v) for k, v in body.items() if isinstance(v, str | int | float)}
