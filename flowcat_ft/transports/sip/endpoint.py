"""SIP over UDP, TCP and TLS on one event loop: sockets, framing, and the transaction layer.

A :class:`SipEndpoint` listens on one port for UDP and TCP, and on another for TLS (RFC
3261 section 26: 5061 by default; the ``ssl`` module's server context, with the
certificate the operator gives). TLS is framed like TCP. What arrives is parsed
(:mod:`flowcat_ft.sip.message`) and matched to its transaction
(:mod:`flowcat_ft.sip.transaction`): a repeated request gets the last response again, a
response goes to the request it answers, and only what is new reaches the transaction
user (the :class:`~flowcat_ft.transports.sip.server.SipServer`), with its server
transaction to answer through.

A request we cannot read is answered ``400`` with the reason as the reason phrase, where
its Via and CSeq can be read (else dropped), and counted; nothing a peer sends raises past
this module. Responses go back where RFC 3261 section 18.2.2 and RFC 3581 say: over TCP or
TLS on the connection the request came on; over UDP to the source address and port when the
top Via has ``rport`` (which we fill in, with ``received``), else to the source address and
the Via's port.

UDP is read as RTP is (:mod:`~flowcat_ft.transports.sip.datagrams`): a wake-up of the
socket reads every datagram waiting, up to :data:`MAX_READS`, not one per pass of the loop,
so a burst of requests is taken in one go; and a datagram the socket cannot take now is
dropped (and counted), for the retransmissions of SIP over UDP to make up.

Threading contract: everything here runs on the endpoint's event loop; other threads
reach it through ``io.submit`` or ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowcat_ft.sip.message import (
    NameAddr,
    Request,
    Response,
    SipError,
    StreamParser,
    Uri,
    Via,
    parse,
)
from flowcat_ft.sip.transaction import ClientTransaction, ServerTransaction
from flowcat_ft.transports.sip.datagrams import bind, read_datagrams, send_datagram
from flowcat_ft.transports.sip.locate import Locator

if TYPE_CHECKING:
    from flowcat_ft.loops import EventLoopThread

logger = logging.getLogger("flowcat_ft.sip")

__all__ = ["Peer", "SipEndpoint", "new_branch", "new_tag"]

UDP_RECEIVE_BUFFER = 4 << 20
"""SO_RCVBUF asked for the SIP UDP socket (the kernel caps it at ``net.core.rmem_max``):
a burst of INVITEs that comes while the loop is busy waits rather than being dropped
(Linux's default, about 200 KiB, holds some 90 INVITEs)."""

MAX_READS = 8
"""SIP datagrams read from the UDP socket per wake-up. Each is parsed and handled there and
then (an OPTIONS took about 0.5 ms on a busy 2-core machine, an INVITE more), so a flood
holds the loop, which also carries calls' RTP, for a few ms before its other work runs;
the rest are read on its next pass."""


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from or goes: ``"UDP"``, ``"TCP"`` or ``"TLS"``, address, port."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.host}:{self.port}"

    @property
    def reliable(self) -> bool:
        """Over a connection (TCP, TLS): no retransmissions, responses on the connection."""
        return self.transport != "UDP"


RequestHandler = Callable[[Request, ServerTransaction | None, Peer], None]
"""Gets each new request with its server transaction (None for an ACK) and its source."""


class SipEndpoint:
    """One port's SIP over UDP and TCP, and another's over TLS (see the module docstring).

    ``advertised`` is the address written into our Via and Contact headers (the public
    address behind NAT; default: the one we listen on, or this host's address towards
    the peer when listening on every address). ``tls``: the server context TLS is served
    with (required with ``"tls"`` in ``transports``), on ``tls_port`` (0: a free one);
    ``tls_client``: the context our own TLS connections are made with (default: the
    system's CAs, and the peer's name checked); ``nameservers``: the DNS servers that
    locate peers (``"address"`` or ``"address:port"``; default: the system's).
    """

    def __init__(
        self,
        io: EventLoopThread,
        on_request: RequestHandler,
        *,
        host: str = "0.0.0.0",
        port: int = 5060,
        transports: tuple[str, ...] = ("udp", "tcp"),
        advertised: str | None = None,
        tls: ssl.SSLContext | None = None,
        tls_port: int = 5061,
        tls_client: ssl.SSLContext | None = None,
        nameservers: tuple[str, ...] = (),
    ) -> None:
        self.io = io
        self.loop = io.loop
        self.host = host
        self.port = port
        self.transports = tuple(t.upper() for t in transports)
        if "TLS" in self.transports and tls is None:
            raise ValueError("SIP over TLS needs a TLS context with the server's certificate")
        self.advertised = advertised
        self.tls = tls
        self.tls_port = tls_port
        self.tls_client = tls_client
        self._locator = Locator(self.transports, nameservers)
        self._on_request = on_request
        self._udp: socket.socket | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._connections: dict[Peer, _TcpConnection] = {}
        self._server_transactions: dict[tuple, ServerTransaction] = {}
        self._client_transactions: dict[tuple, ClientTransaction] = {}
        self.counts: Counter[str] = Counter()  # requests, responses, bad, dropped...

    @property
    def transactions(self) -> int:
        """Transactions not yet over, both ways (those lingering to absorb repeats too).
        Read from any thread: the tables' lengths are read atomically."""
        return len(self._server_transactions) + len(self._client_transactions)

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (port 0: a free port, the same for UDP and TCP)."""
        if "TLS" in self.transports:
            self._tls_server = await self.loop.create_server(
                lambda: _TcpConnection(self, "TLS"),
                self.host,
                self.tls_port,
                ssl=self.tls,
                reuse_address=True,
            )
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        if not {"UDP", "TCP"} & set(self.transports):
            return
        if self.port:
            self.port = await self._listen(self.port)
            return
        for _ in range(20):
            try:
                self.port = await self._listen(0)
                return
            except OSError:  # the port UDP got is taken for TCP: try another pair
                self._close_udp_tcp()
        raise OSError("no free port for both UDP and TCP")

    async def _listen(self, port: int) -> int:
        """Bind UDP, then TCP to the same port (0: UDP's pick); the port bound."""
        if "UDP" in self.transports:
            udp = self._udp = bind(self.host, port)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            self.loop.add_reader(udp, read_datagrams, udp, self._datagram_received, MAX_READS)
            port = udp.getsockname()[1]
        if "TCP" in self.transports:
            self._tcp_server = await self.loop.create_server(
                lambda: _TcpConnection(self), self.host, port, reuse_address=True
            )
            port = self._tcp_server.sockets[0].getsockname()[1]
        return port

    def _close_sockets(self) -> None:
        self._close_udp_tcp()
        if self._tls_server is not None:
            self._tls_server.close()
            self._tls_server = None

    def _close_udp_tcp(self) -> None:
        if self._udp is not None:
            self.loop.remove_reader(self._udp)
            self._udp.close()
            self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None

    async def stop(self) -> None:
        for transaction in [*self._server_transactions.values()]:
            transaction.cancel_timers()
        for transaction in [*self._client_transactions.values()]:
            transaction.cancel_timers()
        self._server_transactions.clear()
        self._client_transactions.clear()
        self._close_sockets()
        for connection in list(self._connections.values()):
            connection.transport.close()

    # -- addresses -------------------------------------------------------------------------

    def local_address(self, peer: Peer | None = None) -> str:
        """Our address as written in headers and SDP for ``peer``."""
        if self.advertised:
            return self.advertised
        if self.host not in ("0.0.0.0", "", "::"):
            return self.host
        if peer is not None and _is_ip(peer.host) and ipaddress.ip_address(peer.host).is_loopback:
            return peer.host
        return _address_towards(peer.host if peer is not None else "192.0.2.1")

    def port_for(self, transport: str) -> int:
        """The port we listen on for ``transport``."""
        return self.tls_port if transport.upper() == "TLS" else self.port

    def via(self, transport: str, peer: Peer | None = None) -> str:
        host, port = self.local_address(peer), self.port_for(transport)
        return str(Via(transport.upper(), host, port, {"branch": new_branch(), "rport": None}))

    def contact(self, transport: str, peer: Peer | None = None, user: str = "agent") -> NameAddr:
        """A Contact that reaches this endpoint (not the peer's, nor a proxy's), over the
        same transport (``;transport=tls`` rather than a ``sips:`` URI, which would ask for
        TLS on every hop to us)."""
        transport = transport.lower()
        params = {"transport": transport} if transport != "udp" else {}
        port = self.port_for(transport)
        return NameAddr(Uri("sip", user, self.local_address(peer), port, params))

    # -- receiving -------------------------------------------------------------------------

    def _datagram_received(self, data: bytes, source: tuple) -> None:
        self.received(data, Peer("UDP", source[0], source[1]))

    def received(self, data: bytes, peer: Peer) -> None:
        """One datagram (UDP) or one framed message (TCP) from ``peer``."""
        if not data.strip(b"\r\n\x00 "):
            return  # a keep-alive
        try:
            message = parse(data, stream=peer.reliable)
        except SipError as error:
            self.bad_message(error, peer)
            return
        self.message(message, peer)

    def bad_message(self, error: SipError, peer: Peer) -> None:
        self.counts["bad"] += 1
        logger.warning("bad SIP message from %s: %s", peer, error.reason)
        if error.request is not None:
            self._stamp_via(error.request, peer)
            reason = error.reason.replace("\r", " ").replace("\n", " ")[:120]
            self._send_response(error.request.response(error.status, reason), peer)

    def message(self, message: Request | Response, peer: Peer) -> None:
        try:
            if isinstance(message, Response):
                self._response(message)
            else:
                self._request(message, peer)
        except Exception:  # a bug of ours: this message is lost, the endpoint goes on
            logger.exception("handling a SIP message from %s failed", peer)

    def _request(self, request: Request, peer: Peer) -> None:
        self.counts["requests"] += 1
        self._stamp_via(request, peer)
        top = request.vias[0]
        method = "INVITE" if request.method == "ACK" else request.method
        key = (top.branch, top.host, top.port, method)
        transaction = self._server_transactions.get(key)
        if request.method == "ACK":
            if transaction is not None and transaction.final and transaction.last.status >= 300:
                transaction.acknowledged()  # the ACK of a failure: the transaction's
            else:
                self._on_request(request, None, peer)  # a 2xx's ACK: the dialog's
            return
        if transaction is not None:
            transaction.repeated()
            return
        transaction = ServerTransaction(
            request,
            lambda data: self._send_response_bytes(data, request, peer),
            self.loop,
            reliable=peer.reliable,
            on_done=lambda t: self._server_transactions.pop(key, None),
        )
        self._server_transactions[key] = transaction
        self._on_request(request, transaction, peer)

    def invite_transaction(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE transaction a CANCEL cancels (same branch and sent-by)."""
        top = cancel.vias[0]
        return self._server_transactions.get((top.branch, top.host, top.port, "INVITE"))

    def _response(self, response: Response) -> None:
        self.counts["responses"] += 1
        key = (response.vias[0].branch, response.cseq.method)
        transaction = self._client_transactions.get(key)
        if transaction is None:
            self.counts["stray responses"] += 1
            return
        transaction.receive(response)

    @staticmethod
    def _stamp_via(request: Request, peer: Peer) -> None:
        """RFC 3261 section 18.2.1 and RFC 3581: ``received`` and ``rport`` on the top Via."""
        vias = request.headers.values("Via")
        top = Via.parse(vias[0])
        params = dict(top.params)
        if top.host != peer.host:
            params["received"] = peer.host
        if "rport" in params:
            params["rport"] = str(peer.port)
        vias[0] = str(Via(top.transport, top.host, top.port, params))
        request.headers.remove("Via")
        for value in vias:
            request.headers.add("Via", value)

    # -- sending ---------------------------------------------------------------------------

    def _send_response(self, response: Response, peer: Peer) -> None:
        self._send_response_bytes(bytes(response), response, peer)

    def _send_response_bytes(self, data: bytes, message: Request | Response, peer: Peer) -> None:
        if peer.reliable:
            self._send(data, peer)
            return
        top = message.vias[0]
        if top.params.get("rport"):
            target = peer
        else:
            target = Peer("UDP", top.params.get("received") or peer.host, top.port or 5060)
        self._send(data, target)

    def _send(self, data: bytes, peer: Peer) -> None:
        if peer.reliable:
            connection = self._connections.get(peer)
            if connection is None:
                self.counts["dropped"] += 1
                logger.warning("no %s connection to %s for a SIP message", peer.transport, peer)
                return
            connection.transport.write(data)
        elif self._udp is not None and not send_datagram(self._udp, data, (peer.host, peer.port)):
            self.counts["dropped"] += 1

    async def connect(self, peer: Peer) -> None:
        """Make sure a TCP or TLS connection to ``peer`` is open (no-op for UDP); TLS
        checks that the peer's certificate names its address. ``OSError`` if it cannot be
        made, or if we do not listen on its transport (the peer could not reach our
        Contact)."""
        if not peer.reliable or peer in self._connections:
            return
        if peer.transport not in self.transports:  # the peer's requests to our Contact
            raise OSError(f"SIP does not listen on {peer.transport} here (transports)")
        tls = None
        if peer.transport == "TLS":
            tls = self.tls_client or ssl.create_default_context()
        await self.loop.create_connection(
            lambda: _TcpConnection(self, peer.transport, peer),
            peer.host,
            peer.port,
            ssl=tls,
            server_hostname=peer.host if tls is not None else None,
        )

    async def request(
        self,
        request: Request,
        peer: Peer,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
    ) -> ClientTransaction:
        """Send ``request`` to ``peer`` in a new client transaction. Raises ``OSError`` if
        a TCP connection cannot be made."""
        await self.connect(peer)
        transaction = ClientTransaction(
            request,
            lambda data: self._send(data, peer),
            self.loop,
            reliable=peer.reliable,
            on_response=on_response,
            on_timeout=on_timeout,
            on_done=lambda t: self._client_transactions.pop(t.key, None),
        )
        self._client_transactions[transaction.key] = transaction
        return transaction

    async def final_response(
        self,
        request: Request,
        peer: Peer,
        on_provisional: Callable[[Response], None] = lambda response: None,
    ) -> Response:
        """Send ``request`` and wait for its final response; a timeout, or a TCP
        connection that cannot be made, is a ``408`` made here."""
        done: asyncio.Future[Response] = self.loop.create_future()

        def on_response(response: Response) -> None:
            if response.status < 200:
                on_provisional(response)
            elif not done.done():
                done.set_result(response)

        def on_timeout() -> None:
            if not done.done():
                done.set_result(request.response(408, "no response"))

        try:
            await self.request(request, peer, on_response, on_timeout)
        except OSError as error:
            logger.warning("cannot send %s to %s: %s", request.method, peer, error)
            return request.response(408, f"cannot connect: {error.strerror or error}")
        return await done

    async def locate(self, uri: Uri) -> list[Peer]:
        """Where requests to ``uri`` go, by RFC 3263 (NAPTR, SRV, then the host's address:
        :mod:`~flowcat_ft.transports.sip.locate`): the servers to try, in order.
        ``OSError`` if there is none."""
        return [Peer(*target) for target in await self._locator.locate(uri)]

    def send_ack(self, ack: Request, peer: Peer) -> None:
        """An ACK for a 2xx: no transaction of its own (RFC 3261 section 13.2.2.4)."""
        self._send(bytes(ack), peer)

    # -- TCP connections -------------------------------------------------------------------

    def _connected(self, connection: _TcpConnection) -> None:
        self._connections[connection.peer] = connection

    def _disconnected(self, connection: _TcpConnection) -> None:
        if self._connections.get(connection.peer) is connection:
            del self._connections[connection.peer]


class _TcpConnection(asyncio.Protocol):
    """One TCP or TLS connection (``kind``), either way: messages cut out of the stream by
    Content-Length."""

    def __init__(self, endpoint: SipEndpoint, kind: str = "TCP", peer: Peer | None = None) -> None:
        self.endpoint = endpoint
        self.kind = kind
        self.peer = peer
        self.parser = StreamParser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.peer is None:
            host, port = transport.get_extra_info("peername")[:2]
            self.peer = Peer(self.kind, host, port)
        self.endpoint._connected(self)

    def data_received(self, data: bytes) -> None:
        pings = self.parser.pings
        try:
            messages = self.parser.feed(data)
        except SipError as error:
            logger.warning("closing SIP connection %s: %s", self.peer, error.reason)
            self.endpoint.counts["bad"] += 1
            self.transport.close()
            return
        if self.parser.pings > pings:
            self.transport.write(b"\r\n")  # RFC 5626's pong
        for message in messages:
            if isinstance(message, SipError):
                self.endpoint.bad_message(message, self.peer)
            else:
                self.endpoint.message(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint._disconnected(self)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _address_towards(host: str) -> str:
    """This host's address on the route towards ``host`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
