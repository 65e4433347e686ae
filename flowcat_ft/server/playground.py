"""The browser playground: a page to talk to the agent, and the media route it talks on.

``GET /`` (and a plain ``GET /playground``) serves the page and ``/playground/<file>`` its
scripts and style (the files in
the ``playground`` folder beside this module, read once, when the pages are made). The page
captures the microphone with an AudioWorklet, sends 16 kHz PCM16 over a WebSocket to
``/playground`` (:class:`~flowcat_ft.serializers.browser.BrowserSerializer`), plays the
agent's audio and shows the conversation's events: the live transcript and each turn's
latency. With its WebRTC switch on it posts an SDP offer to ``/webrtc/offer`` instead (the
WebRTC gateway's page; it answers 503 where WebRTC is unavailable)::

    server = WebSocketServer(
        runtime, pipeline, routes={**default_routes(), **playground_routes()},
        pages=playground_pages(),
    )
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from importlib.resources import files

from flowcat_ft.serializers import Serializer
from flowcat_ft.serializers.browser import BrowserSerializer
from flowcat_ft.transports.http import HttpRequest, HttpResponse, PageHandler
from flowcat_ft.transports.server import SerializerFactory

__all__ = ["MEDIA_PATH", "playground_pages", "playground_routes"]

MEDIA_PATH = "/playground"
"""The WebSocket route the page streams its audio on."""

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
"""The static files served, by suffix, and their content types."""


def playground_pages() -> dict[str, PageHandler]:
    """``/`` and ``/playground`` (the page) and ``/playground/<name>`` for each file it
    loads.

    Pages are looked up by exact path, so only the files listed here are ever served: a
    path such as ``/playground/../config.py`` is simply not found.
    """
    folder = files(__package__) / "playground"
    pages: dict[str, PageHandler] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            pages[f"{MEDIA_PATH}/{entry.name}"] = _static(entry.read_bytes(), CONTENT_TYPES[suffix])
    pages["/"] = pages[MEDIA_PATH] = pages[f"{MEDIA_PATH}/index.html"]
    return pages


def _static(body: bytes, content_type: str) -> PageHandler:
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

    def page(request: HttpRequest) -> HttpResponse:
        if request.method != "GET":
            return HttpResponse.error(HTTPStatus.METHOD_NOT_ALLOWED, "GET only")
        return HttpResponse(HTTPStatus.OK, body, content_type, headers)

    return page


def playground_routes() -> dict[str, SerializerFactory]:
    """The page's media route: ``/playground``, speaking the browser protocol."""
    return {MEDIA_PATH: _browser}


def _browser(query: Mapping[str, str]) -> Serializer:
    return BrowserSerializer()
