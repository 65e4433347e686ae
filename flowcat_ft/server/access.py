"""An access token for the server's own entry points, and browser sessions made from it.

``/raw``, the playground (its page, its files and its media route), ``POST /webrtc/offer``
and the status page are for the server's users, not for carriers (carriers' routes have
checks of their own). With an access token (``server.access_token_env`` names the
environment variable that holds it) each request to them must carry one of:

- ``Authorization: Bearer TOKEN`` (RFC 6750), for programs;
- ``?access_token=TOKEN`` in the URL, for what cannot send headers (a browser's WebSocket);
- the session cookie, for a browser. As with Jupyter's token login, a browser opening a
  page once with ``?access_token=TOKEN`` is answered with the cookie and a redirect to the
  same URL without the token; the page then works without the token in any URL. A browser
  that comes without either is shown a form that asks for the token. (A browser is a GET
  that accepts ``text/html``; a program's GET with the token in its URL is simply let in.)

The cookie holds no secret and needs no storage: ``EXPIRY.SIGNATURE``, the signature an
HMAC-SHA256 of the expiry keyed with the token, so changing the token ends every session.
It is ``HttpOnly``, ``SameSite=Strict`` and, over TLS, ``Secure``; and since browsers send
cookies with WebSocket handshakes from any page, a request that the cookie alone lets in
must come from this server's own pages (its ``Origin``, where it has one, is the host it
asked for).

Refusals: 401 (with ``WWW-Authenticate: Bearer``) where no credential came, 403 for a
wrong token or a cookie sent from another site's page. Other credentials can be let in
beside the token (``also``: the WebRTC companions' own).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from urllib.parse import urlencode, urlsplit
from xml.sax.saxutils import quoteattr

from flowcat_ft.transports.http import Guard, HttpRequest, HttpResponse

__all__ = ["MIN_TOKEN_CHARS", "SESSION_COOKIE", "AccessToken"]

MIN_TOKEN_CHARS = 16
"""The shortest access token taken: shorter ones are too easy to guess."""

SESSION_COOKIE = "flowcat_session"
SESSION_SECS = 12 * 3600
"""How long a browser session lasts; then the page asks for the token again."""

_PARAM = "access_token"


class AccessToken:
    """Guards that let in requests carrying ``token`` (see the module docs).

    ``also``: other requests to let in (checked first); ``clock``: the wall clock, in
    seconds (sessions expire by it). Immutable: shared by every event loop.
    """

    def __init__(
        self,
        token: str,
        *,
        also: Callable[[HttpRequest], bool] = lambda request: False,
        session_secs: float = SESSION_SECS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"an access token needs at least {MIN_TOKEN_CHARS} characters")
        self._token = token.encode()
        self._also = also
        self._session_secs = session_secs
        self._clock = clock

    def guards(self, paths: Iterable[str]) -> dict[str, Guard]:
        """The same guard for each of ``paths``."""
        return dict.fromkeys(paths, self.check)

    def check(self, request: HttpRequest) -> HttpResponse | None:
        """None to let ``request`` in, else the answer that refuses it (or, for a page
        opened with the token in its URL, the redirect that sets the session cookie)."""
        if self._also(request):
            return None
        credential = _bearer(request) or request.query.get(_PARAM)
        if credential is not None:
            if not hmac.compare_digest(credential.encode(), self._token):
                return _refusal(HTTPStatus.FORBIDDEN, "wrong access token")
            if request.query.get(_PARAM) is not None and _from_a_browser(request):
                return self._sign_in(request)
            return None
        session = _cookies(request).get(SESSION_COOKIE)
        if session is not None and self._valid_session(session):
            if not _same_origin(request):
                return _refusal(HTTPStatus.FORBIDDEN, "a session cookie sent from another site")
            return None
        if _from_a_browser(request):
            return _sign_in_form(request)
        return _refusal(
            HTTPStatus.UNAUTHORIZED,
            "this server needs its access token: send Authorization: Bearer TOKEN, or add "
            f"?{_PARAM}=TOKEN to the URL",
        )

    def _sign_in(self, request: HttpRequest) -> HttpResponse:
        """A redirect to the URL without its token, setting the session cookie."""
        expiry = int(self._clock() + self._session_secs)
        cookie = [
            f"{SESSION_COOKIE}={expiry}.{self._signature(expiry)}",
            "Path=/",
            f"Max-Age={int(self._session_secs)}",
            "HttpOnly",
            "SameSite=Strict",
        ]
        if request.secure:
            cookie.append("Secure")
        query = urlencode({k: v for k, v in request.query.items() if k != _PARAM})
        location = request.path + (f"?{query}" if query else "")
        headers = {"Location": location, "Set-Cookie": "; ".join(cookie)}
        return HttpResponse(HTTPStatus.SEE_OTHER, f"signed in: {location}\n", headers=headers)

    def _valid_session(self, session: str) -> bool:
        expiry, _, signature = session.partition(".")
        if not expiry.isdecimal() or len(expiry) > 12 or int(expiry) < self._clock():
            return False
        return hmac.compare_digest(signature.encode(), self._signature(int(expiry)).encode())

    def _signature(self, expiry: int) -> str:
        digest = hmac.new(self._token, f"flowcat-session:{expiry}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def _bearer(request: HttpRequest) -> str | None:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


def _from_a_browser(request: HttpRequest) -> bool:
    """A browser opening a page: a plain GET (not a WebSocket handshake) for HTML."""
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    html = "text/html" in request.headers.get("Accept", "")
    return request.method == "GET" and html and not upgrade


def _cookies(request: HttpRequest) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for header in request.headers.get_all("Cookie"):
        for pair in header.split(";"):
            name, _, value = pair.partition("=")
            cookies.setdefault(name.strip(), value.strip())
    return cookies


def _same_origin(request: HttpRequest) -> bool:
    """Whether the request's ``Origin`` (a browser sends one with a WebSocket handshake or
    a POST) is the host it was sent to; True where it has none (a page's plain GET)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = request.headers.get("Host", "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def _refusal(status: HTTPStatus, message: str) -> HttpResponse:
    refusal = HttpResponse.error(status, message)
    if status == HTTPStatus.UNAUTHORIZED:
        refusal.headers["WWW-Authenticate"] = 'Bearer realm="flowcat-ft"'
    return refusal


def _sign_in_form(request: HttpRequest) -> HttpResponse:
    """401 with a page that asks for the token and opens the same URL with it."""
    hidden = "".join(
        f"<input type=hidden name={quoteattr(k)} value={quoteattr(v)}>"
        for k, v in request.query.items()
        if k != _PARAM
    )
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>flowcat-ft: sign in</title>
<meta name=viewport content="width=device-width, initial-scale=1"></head>
<body style="font: 16px system-ui, sans-serif; max-width: 32em; margin: 4em auto">
<h1>flowcat-ft</h1>
<p>This server needs its access token (the value of the environment variable that
<code>server.access_token_env</code> names).</p>
<form method=get action={quoteattr(request.path)}>{hidden}
<input name={_PARAM} type=password autocomplete=current-password autofocus required
 aria-label="access token" size=40>
<button>Sign in</button></form>
</body></html>
"""
    refusal = HttpResponse(HTTPStatus.UNAUTHORIZED, page, "text/html; charset=utf-8")
    refusal.headers["WWW-Authenticate"] = 'Bearer realm="flowcat-ft"'
    return refusal
