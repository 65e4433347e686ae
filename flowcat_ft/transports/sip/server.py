"""The SIP server transport: calls from SIP trunks and PBXs, with RTP media, on the runtime.

Usable from plain threads, like the WebSocket server::

    server = SipServer(runtime, pipeline, SipOptions(port=5060)).start()
    print(server.uri)  # sip:agent@192.0.2.10:5060
    ...
    server.stop()

Signalling runs on one event-loop thread (:class:`~flowcat_ft.transports.sip.endpoint.
SipEndpoint`: UDP and TCP on one port); each call's RTP runs on one of the event loops,
handed out in turn, beside the WebSocket sessions when the loops are shared. New INVITEs
are refused with a reason: ``503`` (with Retry-After) when the server is full, draining or
stopping, ``403`` from a source address not allowed, ``420`` (with Unsupported) for a
Require we do not support, ``415`` for a body that is not SDP, ``488`` for SDP with no
codec in common. Out of a dialog, OPTIONS is answered ``200`` (a trunk's keep-alive),
CANCEL ``200`` then ``487`` for the INVITE it cancels, and what has no dialog ``481``.
The server also registers with trunks (:mod:`~flowcat_ft.transports.sip.registration`),
places calls (:meth:`SipServer.dial`), hangs them up and transfers them (REFER), from any
thread.

Draining (:meth:`SipServer.drain`, what ``flowcat-ft serve`` does on SIGTERM): a trunk
learns that this server takes no more calls the ways carriers look for, ``503`` with
Retry-After to a new INVITE (it fails over to the next server) and to an OPTIONS ping out
of a dialog (it takes the server out of rotation), while every request in a live call's
dialog (BYE, re-INVITE, UPDATE, session refreshes, OPTIONS) is answered as before. Once
the last call has ended, the trunks' bindings are removed (un-REGISTER), so that a
registrar stops routing calls here.

Threading contract: :meth:`start` and :meth:`stop` from any one thread; ``_calls`` is
used only on the signalling loop; :attr:`calls` copies it there. ``_draining`` is set
once (to True) by :meth:`drain` or :meth:`stop` from any thread and read on the
signalling loop: a plain attribute, so a request that races the drain is taken or refused,
either of which is right. ``_idle`` (a ``threading.Event``: set while no call is live) is
set and cleared on the signalling loop and waited on by :meth:`wait_for_calls`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import secrets
import ssl
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowcat_ft.loops import EventLoops, EventLoopThread
from flowcat_ft.sip.message import Headers, NameAddr, Request, Response, Uri
from flowcat_ft.sip.sdp import DEFAULT_CODECS, SessionDescription, make_offer
from flowcat_ft.transports.edge import LoopEdge
from flowcat_ft.transports.pacer import Ticker
from flowcat_ft.transports.session import MediaOptions
from flowcat_ft.transports.sip.dialog import ALLOW, SUPPORTED, SipCall
from flowcat_ft.transports.sip.endpoint import Peer, SipEndpoint, new_tag
from flowcat_ft.transports.sip.media import RtpPorts, RtpSession
from flowcat_ft.transports.sip.registration import Registration, Trunk

if TYPE_CHECKING:
    from flowcat_ft.pipeline import Pipeline
    from flowcat_ft.runtime import Runtime
    from flowcat_ft.sip.transaction import ServerTransaction
    from flowcat_ft.transports.call_edge import TurnLog

logger = logging.getLogger("flowcat_ft.sip")

__all__ = ["CallFailed", "SipOptions", "SipServer"]


class CallFailed(Exception):
    """A call we placed was not answered: the final ``status`` and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class SipOptions:
    """How the SIP server listens and answers.

    ``host``/``port``: where SIP listens (UDP and TCP, or ``transports``: ``"tls"``
    among them listens on ``tls_port`` with the server context ``tls``, and our TLS
    connections to trunks are made with ``tls_client``, by default the system's CAs);
    ``public_address``: the address written into Contact, Via and SDP (behind NAT; None:
    the address we are reached at); ``rtp_ports``: the range RTP ports come from;
    ``codecs``: in order of our offers' preference (``"OPUS"`` asks for Opus, taken over
    G.711 whenever a peer offers it too); ``allowed_sources``: addresses or networks
    (``"203.0.113.0/24"``) whose INVITEs are taken (empty: any); ``ring_secs``: how
    long ``180 Ringing`` lasts before the answer; ``early_media_secs``: when not 0, how
    long the agent's audio flows as early media (``183 Session Progress`` with our SDP,
    in place of the 180) before the answer; ``rtp_timeout``: seconds without RTP
    before hanging up; ``session_expires`` / ``min_se``: RFC 4028 session timers;
    ``srtp``: ``"allowed"`` (an SRTP offer with SDES keys is taken, ours are plain RTP),
    ``"required"`` (a plain offer gets 488, ours are SRTP) or ``"off"`` (an SRTP offer
    gets 488); ``max_calls``: calls at once (None: the runtime's limit only);
    ``trunks``: registrars to register with
    (:class:`~flowcat_ft.transports.sip.registration.Trunk`); ``nameservers``: the DNS
    servers that locate trunks and phones by NAPTR and SRV (``"address"`` or
    ``"address:port"``; empty: the system's).
    """

    host: str = "0.0.0.0"
    port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    tls: ssl.SSLContext | None = None
    tls_port: int = 5061
    tls_client: ssl.SSLContext | None = None
    public_address: str | None = None
    rtp_ports: tuple[int, int] = (20000, 30000)
    codecs: tuple[str, ...] = DEFAULT_CODECS
    allowed_sources: tuple[str, ...] = ()
    ring_secs: float = 0.0
    early_media_secs: float = 0.0
    rtp_timeout: float = 30.0
    session_expires: int = 1800
    min_se: int = 90
    srtp: str = "allowed"
    max_calls: int | None = None
    trunks: tuple[Trunk, ...] = ()
    nameservers: tuple[str, ...] = ()
    user_agent: str = "flowcat-ft"


class SipServer:
    """Answers SIP calls with the pipeline's agent (see the module docstring).

    ``loops``: event-loop threads to run on (shared, e.g. with the WebSocket server: not
    stopped here), or how many to start (default 1); signalling runs on the first.
    """

    def __init__(
        self,
        runtime: Runtime,
        pipeline: Pipeline,
        options: SipOptions | None = None,
        *,
        media: MediaOptions | None = None,
        loops: int | list[EventLoopThread] = 1,
        turn_log: TurnLog | None = None,
    ) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.options = options or SipOptions()
        self.media = media or MediaOptions()
        self.rtp_ports = RtpPorts(*self.options.rtp_ports)
        self.rtp_host = self.options.host
        self._networks = [
            ipaddress.ip_network(n, strict=False) for n in self.options.allowed_sources
        ]
        self._loops = EventLoops("flowcat-sip", loops)
        self._signalling: EventLoopThread | None = None  # the first loop, once started
        self._media_loops: list[tuple[EventLoopThread, Ticker, LoopEdge]] = []
        self._next_loop = itertools.count()
        self._turn_log = turn_log
        self.endpoint: SipEndpoint | None = None
        self.registrations: list[Registration] = []
        self._calls: dict[tuple[str, str], SipCall] = {}  # the signalling loop's only
        self._idle = threading.Event()
        self._idle.set()
        self._draining = False
        self._unregistering: asyncio.Task | None = None
        self.refused = 0  # INVITEs refused: written on the signalling loop, read anywhere
        # The last calls to end, newest last: appended on the signalling loop, read by
        # copying (list(server.ended)) from any thread.
        self.ended: deque[SipCall] = deque(maxlen=100)

    # -- life ------------------------------------------------------------------------------

    def start(self) -> SipServer:
        """Listen; returns once SIP is listening. ``OSError`` if the port is taken."""
        self.runtime.start()
        loops = self._loops.start()
        self._signalling = loops[0]
        self._media_loops = [(io, Ticker(io.loop), LoopEdge(io, self.runtime.pool)) for io in loops]
        options = self.options
        self.endpoint = SipEndpoint(
            self._signalling,
            self._request,
            host=options.host,
            port=options.port,
            transports=options.transports,
            advertised=options.public_address,
            tls=options.tls,
            tls_port=options.tls_port,
            tls_client=options.tls_client,
            nameservers=options.nameservers,
        )
        try:
            self._signalling.submit(self._start()).result(10)
        except OSError:
            self._loops.stop()
            raise
        logger.info("SIP listening on %s (%s)", self.uri, "/".join(options.transports))
        return self

    async def _start(self) -> None:
        await self.endpoint.start()
        for trunk in self.options.trunks:
            registration = Registration(self.endpoint, trunk, self.options.user_agent)
            self.registrations.append(registration)
            registration.start()

    @property
    def port(self) -> int:
        assert self.endpoint is not None, "not started"
        return self.endpoint.port

    @property
    def uri(self) -> str:
        """The SIP URI that reaches the agent (``sip:agent@address:port``, over the first
        of the transports: ``;transport=tls`` on the TLS port if that is TLS)."""
        assert self.endpoint is not None, "not started"
        return str(self.endpoint.contact(self.options.transports[0]).uri)

    @property
    def calls(self) -> list[SipCall]:
        """The calls now (a copy, taken on the signalling loop)."""

        async def copy() -> list[SipCall]:
            return list(self._calls.values())

        return self._signalling.submit(copy()).result(5)

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let live ones finish for up to ``grace`` seconds, hang up the
        rest (BYE), and stop listening."""
        if self.endpoint is None:
            return
        self._draining = True
        try:
            self._signalling.submit(self._wind_down(grace)).result(grace + 10)
        finally:
            self._loops.stop()
            self.endpoint = None

    async def _wind_down(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._calls and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for call in list(self._calls.values()):
            call.hang_up("the server is shutting down")
        await asyncio.sleep(0.1 if grace else 0)  # let the BYEs out
        await self._unregister()
        await self.endpoint.stop()

    def drain(self) -> None:
        """Take no new call from now on, and say so to the trunks: new INVITEs and OPTIONS
        pings out of a dialog are answered ``503`` with Retry-After, :meth:`dial` fails with
        503, and once the last call has ended the trunks' bindings are removed. Live calls
        go on. From any thread; cannot be undone; calling it again changes nothing."""
        assert self.endpoint is not None, "not started"
        self._draining = True
        self._signalling.loop.call_soon_threadsafe(self._unregister_once_idle)

    @property
    def draining(self) -> bool:
        return self._draining

    def wait_for_calls(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) until no call is live; returns
        whether none is."""
        return self._idle.wait(timeout)

    def _unregister_once_idle(self) -> None:
        """While draining with no call left: remove the trunks' bindings (once)."""
        if self._draining and not self._calls and self._unregistering is None:
            self._unregistering = asyncio.get_running_loop().create_task(self._unregister())

    async def _unregister(self) -> None:
        """Stop every registration (un-REGISTER), waiting up to :data:`_UNREGISTER_SECS`."""
        unregistering = [registration.stop() for registration in self.registrations]
        try:
            async with asyncio.timeout(_UNREGISTER_SECS):
                await asyncio.gather(*unregistering, return_exceptions=True)
        except TimeoutError:
            logger.warning("a registrar did not answer our un-REGISTER in time")

    # -- requests --------------------------------------------------------------------------

    def _request(self, request: Request, transaction: ServerTransaction | None, peer: Peer) -> None:
        """Every new request the endpoint receives (on the signalling loop)."""
        to_tag = request.to.tag
        if to_tag is not None:
            call = self._calls.get((request.call_id, to_tag))
            if call is not None:
                call.request(request, transaction)
            elif transaction is not None:
                transaction.respond(request.response(481))
            return
        if transaction is None:
            return  # an ACK outside any dialog: nothing to do
        method = request.method
        if method == "INVITE":
            self._invite(request, transaction, peer)
        elif method == "CANCEL":
            self._cancel(request, transaction)
        elif method == "OPTIONS" and self._draining:
            transaction.respond(_unavailable(request, "options", _DRAINING, RETRY_AFTER_DRAINING))
        elif method == "OPTIONS":
            response = request.response(200, to_tag="options")
            for name, value in (
                ("Allow", ALLOW),
                ("Accept", "application/sdp"),
                ("Supported", SUPPORTED),
                ("Server", self.options.user_agent),
            ):
                response.headers.add(name, value)
            transaction.respond(response)
        elif method in ("BYE", "UPDATE", "INFO", "NOTIFY"):
            transaction.respond(request.response(481))
        else:
            status = 405 if method in ("REGISTER", "SUBSCRIBE", "MESSAGE", "REFER") else 501
            response = request.response(status)
            response.headers.add("Allow", ALLOW)
            transaction.respond(response)

    def _invite(self, request: Request, transaction: ServerTransaction, peer: Peer) -> None:
        refusal = self._refusal(request, peer)
        if refusal is not None:
            status, reason = refusal
            self.refused += 1
            if status == 503:
                retry = RETRY_AFTER_DRAINING if self._draining else RETRY_AFTER_FULL
                response = _unavailable(request, "refused", reason, retry)
            else:
                response = request.response(status, to_tag="refused")
                response.headers.add("Warning", f'399 flowcat "{reason}"')
            if status == 420:
                unsupported = request.options("Require") - {"timer"}
                response.headers.add("Unsupported", ", ".join(sorted(unsupported)))
            transaction.respond(response)
            logger.info("refused an INVITE from %s: %d %s", peer, status, reason)
            return
        call = SipCall(self, request, transaction, peer, self._media_session())
        self._add(call)
        call.start_answering()

    def _add(self, call: SipCall) -> None:
        self._calls[call.key] = call
        self._idle.clear()

    def _media_session(self) -> RtpSession:
        """A new call's RTP, on the next media loop."""
        io, ticker, edge = self._media_loops[next(self._next_loop) % len(self._media_loops)]
        return RtpSession(
            self.runtime,
            self.pipeline,
            io,
            edge,
            ticker,
            self.media,
            timeout=self.options.rtp_timeout,
            turn_log=self._turn_log,
        )

    def _refusal(self, request: Request, peer: Peer) -> tuple[int, str] | None:
        if self._draining:
            return 503, _DRAINING
        if self._networks and not any(_address(peer.host) in network for network in self._networks):
            return 403, f"{peer.host} is not an allowed source"
        unsupported = request.options("Require") - {"timer"}
        if unsupported:
            return 420, f"unsupported extension: {', '.join(sorted(unsupported))}"
        if request.body and request.content_type != "application/sdp":
            return 415, f"a {request.content_type or 'untyped'} body is not SDP"
        limit = self.options.max_calls
        if limit is not None and len(self._calls) >= limit:
            return 503, "the server is full"
        runtime_limit = self.runtime.max_calls
        if runtime_limit is not None and len(self.runtime.calls) >= runtime_limit:
            return 503, "the server is full"
        return None

    def _cancel(self, request: Request, transaction: ServerTransaction) -> None:
        invite = self.endpoint.invite_transaction(request)
        if invite is None:
            transaction.respond(request.response(481))
            return
        transaction.respond(request.response(200))
        for call in self._calls.values():
            if call.invite is invite.request:
                call.cancelled()
                break

    # -- placing calls, hanging up, transfers (from any thread) ----------------------------

    def dial(
        self,
        to: str,
        *,
        from_user: str = "agent",
        credentials: tuple[str, str] | None = None,
        ring_timeout: float = 60.0,
    ) -> Future[SipCall]:
        """Call ``to`` (a ``sip:`` URI: the number at a trunk, a PBX extension) with the
        agent. The future gives the :class:`SipCall` once it is answered, or raises
        :class:`CallFailed` with the status (busy, no answer...). ``credentials`` (user,
        password) answer a trunk's digest challenge."""
        return self._signalling.submit(self._dial(to, from_user, credentials, ring_timeout))

    async def _dial(
        self, to: str, from_user: str, credentials: tuple[str, str] | None, ring_timeout: float
    ) -> SipCall:
        uri = Uri.parse(to)
        if self._draining:
            raise CallFailed(503, _DRAINING)
        if self.options.max_calls is not None and len(self._calls) >= self.options.max_calls:
            raise CallFailed(503, "the server is full")
        peers = await self.endpoint.locate(uri)
        for peer, next_peer in zip(peers, [*peers[1:], None], strict=True):
            call = await self._placed_call(uri, peer, from_user)
            response = await call.dial(credentials, ring_timeout)
            if call.state == "confirmed":
                logger.info("%s answered our call %s", to, call.call_id)
                return call
            if next_peer is None or call.reached or response.status not in _FAILOVER:
                raise CallFailed(response.status, response.reason)
            # RFC 3263 section 4.3: a server that cannot be reached, or is unavailable
            logger.info("%s: %d %s; trying %s", peer, response.status, response.reason, next_peer)
        raise AssertionError("unreachable: locate() returns a server or raises")

    async def _placed_call(self, uri: Uri, peer: Peer, from_user: str) -> SipCall:
        """A call to ``uri`` through ``peer``, its RTP port bound, its INVITE not sent."""
        media = self._media_session()
        try:
            bind = media.bind(self.rtp_ports, self.rtp_host)
            await asyncio.wrap_future(media.io.submit(bind))
        except OSError as error:
            raise CallFailed(503, f"no RTP port free: {error}") from None
        local = NameAddr(Uri("sip", from_user, self.endpoint.local_address(peer)))
        headers = Headers()
        for name, value in (
            ("Via", self.endpoint.via(peer.transport, peer)),
            ("Max-Forwards", "70"),
            ("From", local.with_tag(new_tag())),
            ("To", NameAddr(uri)),
            ("Call-ID", f"{secrets.token_hex(10)}@flowcat"),
            ("CSeq", "1 INVITE"),
            ("Contact", self.endpoint.contact(peer.transport, peer, user=from_user)),
            ("Allow", ALLOW),
            ("Supported", SUPPORTED),
            ("User-Agent", self.options.user_agent),
        ):
            headers.add(name, value)
        call = SipCall(self, Request("INVITE", uri, headers), None, peer, media, outbound=True)
        self._add(call)
        return call

    def hang_up(self, call_id: str, reason: str = "hung up by the application") -> None:
        """Hang up the call with this Call-ID (BYE, or CANCEL while it rings)."""

        def hang_up() -> None:
            for call in list(self._calls.values()):
                if call.call_id == call_id:
                    call.hang_up(reason)

        self._signalling.loop.call_soon_threadsafe(hang_up)

    def transfer(self, call_id: str, target: str) -> Future[bool]:
        """Transfer the call to ``target`` (a ``sip:`` or ``tel:`` URI: a human) with
        REFER; the future says whether the transfer went through (the call is then hung
        up) or not (the call goes on)."""

        async def transfer() -> bool:
            calls = [call for call in self._calls.values() if call.call_id == call_id]
            if not calls:
                raise KeyError(f"no call {call_id}")
            return await calls[0].transfer(target)

        return self._signalling.submit(transfer())

    def call_ended(self, call: SipCall) -> None:
        """A call's dialog is over (called by the call, on the signalling loop)."""
        self._calls.pop(call.key, None)
        self.ended.append(call)
        if not self._calls:
            self._idle.set()
            self._unregister_once_idle()

    # -- for the calls ---------------------------------------------------------------------

    def media_address(self, peer: Peer) -> str:
        """The address our SDP gives for RTP."""
        return self.options.public_address or self.endpoint.local_address(peer)

    def offer(self, peer: Peer, port: int, session_id: int) -> SessionDescription:
        """Our SDP offer (SRTP only where ``options.srtp`` requires it)."""
        return make_offer(
            self.media_address(peer),
            port,
            codecs=self.options.codecs,
            session_id=session_id,
            srtp=self.options.srtp == "required",
        )


_UNREGISTER_SECS = 5.0
_FAILOVER = (408, 503)
"""Failures of ours (no answer, no connection: 408) or the server's (503) after which the
next server DNS gave is tried (RFC 3263 section 4.3)."""
_DRAINING = "the server is draining"
RETRY_AFTER_FULL = 5
"""Seconds a trunk is asked to wait before it sends a full server another INVITE."""
RETRY_AFTER_DRAINING = 300
"""Seconds a trunk is asked to leave a draining server alone: it takes no call again."""


def _unavailable(request: Request, to_tag: str, reason: str, retry_after: int) -> Response:
    """A ``503`` with Retry-After (RFC 3261 section 21.5.4) and the reason in a Warning."""
    response = request.response(503, to_tag=to_tag)
    response.headers.add("Retry-After", str(retry_after))
    response.headers.add("Warning", f'399 flowcat "{reason}"')
    return response


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
