"""The WebRTC companion process: aiortc peers bridged to the server's media route.

Run by :class:`~flowcat_ft.transports.webrtc.gateway.WebRTCGateway` under a python where
aiortc imports (the GIL twin), never imported by the free-threaded server::

    FLOWCAT_WEBRTC_TOKEN=... python -m flowcat_ft.transports.webrtc.companion \\
        --server ws://127.0.0.1:8765 --control /webrtc/companion --media /playground

It connects to the gateway's control socket, says hello (the token from the environment,
its pid) and answers each offer the gateway forwards (protocol in the gateway's module
docs). Each of its connections to the server carries the token as a bearer token
(``Authorization: Bearer TOKEN``), which lets it through the server's access checks and
exempts it from the limits per client address: the browsers it serves are counted when
they post their offers. Where the server serves ``wss`` (``--server wss://...``) the
server's certificate is not checked: the companion connects to its own parent on loopback,
whatever name the certificate is for.

Each answered offer is a :class:`Peer`: once its connection is up, it opens a WebSocket
client connection to ``--server`` + ``--media`` and sends ``start``; then

- the peer's audio (Opus, decoded by aiortc to 48 kHz) is resampled to PCM16 mono 20 ms
  frames at the media route's rate and sent as binary messages;
- the server's binary audio is queued on the peer's outgoing track (a
  :class:`~flowcat_ft.transports.webrtc.media.PcmTrack`, paced at real time); its
  ``clear`` drops what is queued, and each ``mark`` is echoed back once the audio before it
  has been played (or cleared);
- the server's text messages go to the peer's ``events`` data channel, if it opened one,
  and text the peer sends there goes to the server.

The peer hanging up (or its connection failing, or never connecting within
:data:`CONNECT_TIMEOUT`) sends ``stop`` and closes the media connection; the server closing
the media connection (the call ended) closes the peer connection. When the control link
closes, or on SIGTERM, every peer is closed the same way and the process exits.

Everything runs on one asyncio event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import ssl
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import websockets

from flowcat_ft.transports.webrtc import media
from flowcat_ft.transports.webrtc.gateway import TOKEN_ENV

if TYPE_CHECKING:
    from aiortc import RTCDataChannel
    from aiortc.mediastreams import MediaStreamTrack

logger = logging.getLogger("flowcat_ft.webrtc.companion")

CONNECT_TIMEOUT = 30.0
"""Seconds an answered peer has to connect (ICE and DTLS) before it is dropped."""

MAX_QUEUED = 0.5
"""Seconds of the server's audio a peer's track holds at most. The server's pacing sends
at most its lead (80 ms by default) ahead of real time, so more means the two clocks
drifted apart in a stall, and the oldest audio is dropped rather than heard late."""

EVENTS_CHANNEL = "events"
"""The label of the data channel that carries the server's JSON events."""


class Companion:
    """This process's peers, and its end of the control link."""

    def __init__(
        self,
        control: websockets.ClientConnection,
        media_url: str,
        ice_servers: list[str],
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self.control = control
        self.media_url = media_url
        self.connect_options = connect_options or {}  # for websockets.connect: credentials
        self.sample_rate = int(dict(parse_qsl(urlsplit(media_url).query)).get("sample_rate", 16000))
        import aiortc  # on demand: this module is imported where aiortc is not (3.13t)

        self.ice_servers = [aiortc.RTCIceServer(uri) for uri in ice_servers]
        self.peers: set[Peer] = set()
        self._tasks: set[asyncio.Task] = set()

    async def serve(self) -> None:
        """Answer offers until the control link closes."""
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.control:
                request = json.loads(text)
                if request.get("op") == "offer":
                    self.spawn(self._answer(request))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task kept referenced until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: dict[str, Any]) -> None:
        peer = Peer(self)
        self.peers.add(peer)
        try:
            answer = await peer.answer(request["sdp"], request["type"])
        except Exception as error:
            logger.warning("peer %s: cannot answer the offer: %s", peer.id, error)
            reply = {"op": "error", "id": request["id"], "message": str(error) or repr(error)}
            await peer.close("bad offer")
        else:
            reply = {"op": "answer", "id": request["id"], "peer": peer.id, **answer}
            self.peers_changed()
        await self._send_control(reply)

    def peers_changed(self) -> None:
        self.spawn(self._send_control({"op": "peers", "count": len(self.peers)}))

    async def _send_control(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.control.send(json.dumps(message, separators=(",", ":")))

    async def close(self) -> None:
        """Close every peer (each call ends) and the control link."""
        await asyncio.gather(
            *(peer.close("the WebRTC companion is stopping") for peer in self.peers)
        )
        await self.control.close()


class Peer:
    """One WebRTC peer connection and its media connection to the server."""

    def __init__(self, companion: Companion) -> None:
        self.companion = companion
        self.id = secrets.token_hex(6)
        import aiortc

        configuration = aiortc.RTCConfiguration(iceServers=companion.ice_servers)
        self.pc = aiortc.RTCPeerConnection(configuration)
        self.outgoing = media.PcmTrack(
            companion.sample_rate, max_queued=MAX_QUEUED, on_mark=self._mark_played
        )
        self.incoming: MediaStreamTrack | None = None
        self.channel: RTCDataChannel | None = None
        self.ws: websockets.ClientConnection | None = None
        self._bridge: asyncio.Task | None = None
        self._closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, sdp: str, kind: str) -> dict[str, str]:
        """Take the peer's offer; the answer carries every local candidate."""
        import aiortc

        await self.pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=sdp, type=kind))
        if not any(t.kind == "audio" for t in self.pc.getTransceivers()):
            raise ValueError("the offer has no audio")
        self.pc.addTrack(self.outgoing)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        asyncio.get_running_loop().call_later(CONNECT_TIMEOUT, self._check_connected)
        local = self.pc.localDescription
        return {"sdp": local.sdp, "type": local.type}

    # -- aiortc's events -------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.incoming is None:
            self.incoming = track

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_CHANNEL:
            return
        self.channel = channel

        @channel.on("message")
        def to_server(message: str | bytes) -> None:
            if isinstance(message, str):
                self._send_to_server(message)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self._bridge is None and not self._closed:
            logger.info("peer %s connected", self.id)
            self._bridge = asyncio.get_running_loop().create_task(self._run_bridge())
        elif state in ("failed", "closed"):
            self.companion.spawn(self.close(f"peer connection {state}"))

    def _check_connected(self) -> None:
        if self._bridge is None and not self._closed:
            self.companion.spawn(self.close(f"not connected within {CONNECT_TIMEOUT:g} s"))

    # -- the media connection to the server ------------------------------------------------

    async def _run_bridge(self) -> None:
        """Carry the call over the server's media route until either side ends it."""
        start = {"event": "start", "call_id": self.id}
        start["parameters"] = {"transport": "webrtc", "peer": self.id}
        try:
            url, options = self.companion.media_url, self.companion.connect_options
            async with websockets.connect(url, compression=None, **options) as ws:
                self.ws = ws
                await ws.send(json.dumps(start))
                uplink = asyncio.get_running_loop().create_task(self._uplink(ws))
                try:
                    async for message in ws:
                        self._from_server(message)
                finally:
                    uplink.cancel()
        except (OSError, websockets.WebSocketException) as error:
            logger.warning("peer %s: media connection: %s", self.id, error)
        finally:
            self.ws = None
        await self.close("the call ended")

    async def _uplink(self, ws: websockets.ClientConnection) -> None:
        if self.incoming is None:
            return
        with contextlib.suppress(websockets.ConnectionClosed):
            async for pcm in media.pcm_frames(self.incoming, self.companion.sample_rate):
                await ws.send(pcm)

    def _from_server(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.outgoing.put(message)
            return
        try:
            event = json.loads(message)
        except ValueError:
            event = None
        if isinstance(event, dict):
            if event.get("event") == "clear":
                self.outgoing.clear()
            elif event.get("event") == "mark":
                self.outgoing.mark(str(event.get("name", "")))
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(message)

    def _mark_played(self, name: str) -> None:
        self._send_to_server(json.dumps({"event": "mark", "name": name}))

    def _send_to_server(self, text: str) -> None:
        ws = self.ws
        if ws is not None:
            self.companion.spawn(_send_quietly(ws, text))

    # -- the end ---------------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        """Hang up: end the call on the server and close the peer connection."""
        if self._closed:
            return
        self._closed = True
        logger.info("peer %s closed: %s", self.id, reason)
        ws = self.ws
        if ws is not None:
            await _send_quietly(ws, json.dumps({"event": "stop", "reason": reason}))
            await ws.close()
        if self._bridge is not None and self._bridge is not asyncio.current_task():
            await asyncio.gather(self._bridge, return_exceptions=True)
        self.outgoing.stop()
        await self.pc.close()
        self.companion.peers.discard(self)
        self.companion.peers_changed()


async def _send_quietly(ws: websockets.ClientConnection, text: str) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.send(text)


async def run(server: str, control_path: str, media_path: str, ice_servers: list[str]) -> None:
    """Serve the gateway at ``server`` until the control link closes or SIGTERM comes."""
    import aiortc

    token = os.environ.pop(TOKEN_ENV, "")
    options = connect_options(server, token)
    async with websockets.connect(server + control_path, compression=None, **options) as control:
        hello = {"op": "hello", "token": token, "pid": os.getpid(), "aiortc": aiortc.__version__}
        await control.send(json.dumps(hello))
        companion = Companion(control, server + media_path, ice_servers, options)
        logger.info("serving WebRTC for %s (aiortc %s)", server, aiortc.__version__)
        serving = asyncio.get_running_loop().create_task(companion.serve())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, serving.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        if control.close_code not in (None, 1000, 1001):
            logger.warning("the gateway closed the control link: %s", control.close_reason)
        await companion.close()
    logger.info("stopped")


def connect_options(server: str, token: str) -> dict[str, Any]:
    """``websockets.connect`` options for the connections to ``server``: the token, and
    for ``wss`` TLS that does not check the certificate (the server is this process's own
    parent, on loopback)."""
    options: dict[str, Any] = {"additional_headers": {"Authorization": f"Bearer {token}"}}
    if server.startswith("wss://"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        options["ssl"] = context
    return options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the server, e.g. ws://127.0.0.1:8765")
    parser.add_argument("--control", required=True, help="the gateway's control socket path")
    parser.add_argument("--media", required=True, help="the media route's path and query")
    parser.add_argument(
        "--ice-server", action="append", default=[], help="a STUN or TURN URI (repeatable)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("aioice", "aiortc"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        asyncio.run(run(args.server, args.control, args.media, args.ice_server))
    except (OSError, websockets.InvalidHandshake) as error:
        logger.error("cannot reach the gateway at %s%s: %s", args.server, args.control, error)
        sys.exit(1)


if __name__ == "__main__":
    main()
