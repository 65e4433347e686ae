"""One SIP call's dialog (RFC 3261 section 12) on the signalling loop, and its media.

A :class:`SipCall` is made by the server for an INVITE it accepts, and answers it:
``100 Trying``, ``180 Ringing`` (for ``ring_secs``), then ``200 OK`` with our SDP answer and
a Contact that points at this server, sent again until the ACK comes (no ACK within
64·T1: BYE). Its media (:class:`~flowcat_ft.transports.sip.media.RtpSession`) runs on a
media loop, where the runtime call is opened before the 200 goes out (a full runtime is a
503, not a call with no agent). With ``early_media_secs`` and an offer in the INVITE, the
call opens first and ``183 Session Progress`` carries our answer instead of the 180: RTP
flows both ways (the agent's greeting or ringback plays, the caller is heard) for that
long before the 200 (RFC 3261 section 13.3.1.1; the 183 is not sent reliably: a
``Require: 100rel`` is refused with 420, as PRACK is not supported). A call we place
(:meth:`SipCall.dial`) sends our offer, answers one digest challenge, CANCELs when nobody
answers in time, and ACKs the 2xx; a 18x with an SDP answer opens the call at once, so
that the agent hears the far end's early media (a carrier's announcement, ringback)
whether the call is then answered or not.

In the dialog: BYE either way; CANCEL before the answer (``487`` to the INVITE); re-INVITE
and UPDATE with or without SDP (hold, a new media address, a session refresh; one while
another is pending is ``491``); OPTIONS; INFO with ``application/dtmf-relay``. RFC 4028
session timers: the interval and refresher the caller asked for (at least ``min_se``), or
ours if it only supports them; we refresh with UPDATE (or re-INVITE) at half the interval
when we are the refresher, and hang up when the caller, as refresher, lets it lapse.
Record-Route becomes the route set that requests we send in the dialog follow. REFER
transfers the call (RFC 3515), which ends once the transferee's NOTIFY says it worked.

Threading contract: a SipCall is used only on the signalling loop. Its media session
asks it to hang up through :meth:`hang_up`, handed over with
``call_soon_threadsafe``; it reaches the media session the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from flowcat_ft.frames import InputDTMFFrame
from flowcat_ft.runtime import RuntimeFullError
from flowcat_ft.sip.digest import DigestError, authorization, strongest
from flowcat_ft.sip.message import Headers, NameAddr, Request, Response, SipError
from flowcat_ft.sip.sdp import (
    Negotiated,
    SdpError,
    SessionDescription,
    accept_answer,
    answer,
    parse_sdp,
    with_version,
)
from flowcat_ft.sip.srtp import new_key
from flowcat_ft.transports.sip.endpoint import Peer, new_tag

if TYPE_CHECKING:
    from flowcat_ft.sip.transaction import ServerTransaction
    from flowcat_ft.transports.sip.media import RtpSession
    from flowcat_ft.transports.sip.server import SipServer

logger = logging.getLogger("flowcat_ft.sip")

__all__ = ["ALLOW", "SipCall"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY"
TRANSFER_SECS = 30.0
"""How long a transfer may take to be reported (NOTIFY with a final status)."""
SUPPORTED = "timer"
_session_ids = itertools.count(int(time.time()))


class SipCall:
    """One call's dialog: answering an INVITE (``transaction`` is its server transaction)
    or placing one (``outbound``: ``invite`` is ours, sent by :meth:`dial`). See the
    module docstring."""

    def __init__(
        self,
        server: SipServer,
        invite: Request,
        transaction: ServerTransaction | None,
        peer: Peer,
        media: RtpSession,
        *,
        outbound: bool = False,
    ) -> None:
        self.server = server
        self.endpoint = server.endpoint
        self.invite = invite
        self.peer = peer
        self.media = media
        self.outbound = outbound
        self.call_id = invite.call_id
        if outbound:
            self.local, self.remote = invite.from_, invite.to
            self.local_tag, self.remote_tag = self.local.tag, None
            self.remote_target = invite.uri
            self.route_set: list[str] = []
            self.remote_cseq, self.local_cseq = 0, invite.cseq.number
            self._peer_allow = ""
        else:
            self.local_tag = new_tag()
            self.remote_tag = invite.from_.tag
            self.local = invite.to.with_tag(self.local_tag)
            self.remote = invite.from_
            contact = invite.contact
            self.remote_target = contact.uri if contact is not None else invite.from_.uri
            self.route_set = invite.headers.values("Record-Route")  # UAS: in order
            self.remote_cseq, self.local_cseq = invite.cseq.number, 0
            self._peer_allow = invite.headers.get("Allow") or ""
        loop = asyncio.get_running_loop()
        media.on_hangup = lambda reason: loop.call_soon_threadsafe(self.hang_up, reason)
        self.state = "early"  # early, answered (200 sent), confirmed (ACKed), ended
        self.end_reason = ""
        self._invite_transaction: ServerTransaction | None = transaction
        self._pending_offer: SessionDescription | None = None  # our offer awaiting an ACK
        self._local_sdp: SessionDescription | None = None
        self._version = 1
        self._session_id = next(_session_ids)
        self._srtp_key = new_key()  # ours in every SRTP answer of the call
        self._refresh_interval: float | None = None
        self._we_refresh = False
        self._session_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._invite_sent = invite  # the INVITE a CANCEL cancels (outbound)
        self._transfer: asyncio.Future[bool] | None = None  # our REFER's outcome
        self.started_at = time.monotonic()
        self._early_media: asyncio.Task | None = None  # opening the call on a 18x (outbound)
        self.reached = False  # the peer answered our INVITE with anything (outbound)

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_media_loop(self, callback: Callable[..., object], *args: object) -> None:
        self.media.io.loop.call_soon_threadsafe(callback, *args)

    # -- answering the INVITE --------------------------------------------------------------

    def start_answering(self) -> None:
        """Answer the INVITE (:meth:`answer`) as one of the call's tasks, on this loop."""
        self._spawn(self.answer())

    async def answer(self) -> None:
        """Answer the INVITE: 100, 180, then 200 with SDP (or a failure)."""
        invite, transaction = self.invite, self._invite_transaction
        transaction.respond(invite.response(100))
        offer = None
        if invite.body:
            try:
                offer = parse_sdp(invite.body)
            except SdpError as error:
                self._fail(error.status, error.reason)
                return
        interval = self._session_interval(invite, transaction)
        if interval is None:
            return
        try:
            port = await self._in_media(
                self.media.bind(self.server.rtp_ports, self.server.rtp_host)
            )
        except OSError as error:
            self._fail(503, "no RTP port free")
            logger.warning("no RTP port for %s: %s", self.call_id, error)
            return
        if self.state != "early":  # cancelled meanwhile
            return
        address = self.endpoint.local_address(self.peer)
        negotiated: Negotiated | None = None
        try:
            if offer is not None:
                self._local_sdp, negotiated = answer(
                    offer,
                    self.server.media_address(self.peer),
                    port,
                    codecs=self.server.options.codecs,
                    session_id=self._session_id,
                    srtp=self.server.options.srtp,
                    srtp_key=self._srtp_key,
                )
            else:  # a late offer: ours goes in the 200, the answer comes in the ACK
                self._local_sdp = self._pending_offer = self.server.offer(
                    self.peer, port, self._session_id
                )
        except SdpError as error:
            self._fail(error.status, error.reason)
            return
        options = self.server.options
        early_media = bool(options.early_media_secs) and negotiated is not None
        if not early_media:
            transaction.respond(self._response(invite, 180))
            if options.ring_secs:
                await asyncio.sleep(options.ring_secs)
            if self.state != "early":  # cancelled while ringing
                return
        metadata = {
            "call_id": self.call_id,
            "from": str(self.remote.uri),
            "to": str(self.local.uri),
            "peer": str(self.peer),
        }
        try:
            await self._in_media(_run(self.media.open, negotiated, metadata))
        except RuntimeFullError:
            self._fail(503, "the server is full", retry_after=True)
            return
        if self.state != "early":  # cancelled while the call opened
            return
        if early_media:
            transaction.respond(self._response(invite, 183, sdp=self._local_sdp))
            await asyncio.sleep(options.early_media_secs)
            if self.state != "early":  # cancelled during the early media
                return
        ok = self._response(invite, 200, sdp=self._local_sdp)
        self._add_session_timer(ok, invite, interval)
        self.state = "answered"
        transaction.on_timeout = self._no_ack
        transaction.respond(ok)
        logger.info(
            "answered %s from %s (%s, %s)",
            self.call_id,
            self.peer,
            negotiated.codec.name if negotiated else "late offer",
            address,
        )

    async def _in_media(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the media loop and wait for it here."""
        return await asyncio.wrap_future(self.media.io.submit(coro))

    def _fail(self, status: int, reason: str, *, retry_after: bool = False) -> None:
        response = self.invite.response(status, to_tag=self.local_tag)
        if retry_after:
            response.headers.add("Retry-After", "5")
        if status in (420, 488, 503):
            response.headers.add("Warning", f'399 flowcat "{_quote(reason)}"')
        if self._invite_transaction is not None and not self._invite_transaction.final:
            self._invite_transaction.respond(response)
        self._ended(reason)

    def _no_ack(self) -> None:
        if self.state == "answered":
            logger.warning("no ACK for the 200 OK of %s: hanging up", self.call_id)
            self.hang_up("no ACK")

    def _response(
        self, request: Request, status: int, *, sdp: SessionDescription | None = None
    ) -> Response:
        """A response in this dialog: our tag, Contact, Record-Route copied (2xx, 18x)."""
        response = request.response(status, to_tag=self.local_tag)
        if request.method == "INVITE" and 100 < status < 300:
            for value in request.headers.values("Record-Route"):
                response.headers.add("Record-Route", value)
        if request.method in ("INVITE", "UPDATE") and 100 < status < 300:
            response.headers.add("Contact", self.endpoint.contact(self.peer.transport, self.peer))
        if status == 200:
            response.headers.add("Allow", ALLOW)
            response.headers.add("Supported", SUPPORTED)
        response.headers.add("Server", self.server.options.user_agent)
        if sdp is not None:
            response.headers.add("Content-Type", "application/sdp")
            response.body = str(sdp).encode()
        return response

    # -- placing a call --------------------------------------------------------------------

    async def dial(self, credentials: tuple[str, str] | None, ring_timeout: float) -> Response:
        """Send our INVITE (with our offer), answer one digest challenge with
        ``credentials`` (user, password), ACK the 2xx and open the call; CANCEL after
        ``ring_timeout`` seconds without an answer. Returns the final response."""
        self._local_sdp = self.server.offer(self.peer, self.media.port, self._session_id)
        invite = self.invite
        invite.headers.add("Content-Type", "application/sdp")
        invite.body = str(self._local_sdp).encode()
        for attempt in range(2):
            response = await self._invite_once(invite, ring_timeout)
            if response.status not in (401, 407) or credentials is None or attempt:
                break
            invite = self._with_credentials(invite, response, credentials)
        opened_early = self._early_media is not None and await self._early_media
        if response.status >= 300 or self.state == "ended":
            self._ended(self.end_reason or f"{response.status} {response.reason}".strip())
            return response
        self.remote = response.to
        self.remote_tag = response.to.tag
        contact = response.contact
        if contact is not None:
            self.remote_target = contact.uri
        self.route_set = list(reversed(response.headers.values("Record-Route")))
        self._peer_allow = response.headers.get("Allow") or ""
        self.endpoint.send_ack(self._ack_for(response), self._next_hop())
        try:
            negotiated = accept_answer(self._local_sdp, parse_sdp(response.body))
        except SdpError as error:
            self.hang_up(f"the answer is unusable: {error.reason}")
            return response
        if opened_early:
            self._on_media_loop(self.media.update, negotiated)
        elif not await self._open_outbound(negotiated):
            self.hang_up("the server is full")
            return response
        self.state = "confirmed"
        return response

    async def _open_outbound(self, negotiated: Negotiated) -> bool:
        """Open the call we placed on the pipeline; False if the runtime is full."""
        metadata = {"call_id": self.call_id, "to": str(self.remote.uri), "direction": "outbound"}
        try:
            await self._in_media(_run(self.media.open, negotiated, metadata))
        except RuntimeFullError:
            return False
        return True

    def _provisional(self, response: Response) -> None:
        """A 18x to our INVITE: one with an SDP answer (the first) opens the call, so the
        agent hears the early media."""
        if self._early_media is not None or not response.body or response.status == 100:
            return
        try:
            negotiated = accept_answer(self._local_sdp, parse_sdp(response.body))
        except SdpError as error:
            logger.info("early media of %s ignored: %s", self.call_id, error.reason)
            return
        logger.info("early media on %s (%d %s)", self.call_id, response.status, response.reason)
        self._early_media = asyncio.get_running_loop().create_task(self._open_outbound(negotiated))

    async def _invite_once(self, invite: Request, ring_timeout: float) -> Response:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Response] = loop.create_future()
        self._invite_sent = invite

        def on_response(response: Response) -> None:
            self.reached = True
            if response.status < 200:
                self._provisional(response)
                return
            if done.done():  # a repeated 2xx: its ACK went missing
                if response.status < 300:
                    self.endpoint.send_ack(self._ack_for(response), self._next_hop())
            else:
                done.set_result(response)

        def on_timeout() -> None:
            if not done.done():
                done.set_result(invite.response(408, "no answer"))

        try:
            await self.endpoint.request(invite, self.peer, on_response, on_timeout)
        except OSError as error:
            return invite.response(503, f"cannot connect: {error.strerror or error}")
        try:
            async with asyncio.timeout(ring_timeout):
                return await asyncio.shield(done)
        except TimeoutError:
            self._cancel()
            return await done

    def _with_credentials(
        self, invite: Request, challenge: Response, credentials: tuple[str, str]
    ) -> Request:
        """The INVITE again, with a CSeq and branch of its own and our answer to the
        challenge (RFC 3261 section 22.2)."""
        proxy = challenge.status == 407
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        user, password = credentials
        try:
            value = authorization(
                strongest(challenge.headers.values(name)), "INVITE", str(invite.uri), user,
                password,
            )  # fmt: skip
        except DigestError as error:
            logger.warning("cannot answer the challenge for %s: %s", self.call_id, error)
            return invite
        again = Request("INVITE", invite.uri, invite.headers.copy(), invite.body)
        self.local_cseq += 1
        again.headers.set("CSeq", f"{self.local_cseq} INVITE")
        again.headers.set("Via", self.endpoint.via(self.peer.transport, self.peer))
        again.headers.add("Proxy-Authorization" if proxy else "Authorization", value)
        return again

    def _cancel(self) -> None:
        """CANCEL our INVITE (RFC 3261 section 9.1: same Request-URI, Call-ID, top Via)."""
        invite = self._invite_sent
        headers = Headers()
        headers.add("Via", invite.headers.get("Via"))
        for route in invite.headers.values("Route"):
            headers.add("Route", route)
        for name in ("From", "To", "Call-ID"):
            headers.add(name, invite.headers.get(name))
        headers.add("CSeq", f"{invite.cseq.number} CANCEL")
        headers.add("Max-Forwards", "70")
        cancel = Request("CANCEL", invite.uri, headers)
        self._spawn(self._send_to(cancel, self.peer))

    async def _send_to(self, request: Request, peer: Peer) -> None:
        await self.endpoint.final_response(request, peer)

    # -- session timers (RFC 4028) ---------------------------------------------------------

    def _session_interval(self, request: Request, transaction: ServerTransaction) -> float | None:
        """The session interval a request asks for (0: none); None if it was refused
        (422 for too short a one, 400 for a malformed one)."""
        options = self.server.options
        value = request.headers.get("Session-Expires")
        if value is None:
            return float(options.session_expires) if "timer" in request.options("Supported") else 0
        seconds = value.partition(";")[0].strip()
        if seconds.isdigit() and int(seconds) >= options.min_se:
            return float(seconds)
        if seconds.isdigit():
            response = request.response(422, to_tag=self.local_tag)
            response.headers.add("Min-SE", str(options.min_se))
            reason = f"session interval {seconds} s is under our {options.min_se} s"
        else:
            reason = f"bad Session-Expires {value!r}"
            response = request.response(400, reason, to_tag=self.local_tag)
        transaction.respond(response)
        if request is self.invite:
            self._ended(reason)
        return None

    def _add_session_timer(self, response: Response, request: Request, interval: float) -> None:
        """Session-Expires in our 2xx, and the timer for whoever refreshes."""
        if not interval:
            return
        asked = (request.headers.get("Session-Expires") or "").lower()
        peer_supports = "timer" in request.options("Supported")
        if "refresher=uas" in asked.replace(" ", "") or not peer_supports:
            refresher = "uas"
        else:
            refresher = "uac"
        response.headers.add("Session-Expires", f"{int(interval)};refresher={refresher}")
        if peer_supports:
            response.headers.add("Require", "timer")
        self._refresh_interval = interval
        self._we_refresh = refresher == "uas"
        self._restart_session_timer()

    def _restart_session_timer(self) -> None:
        if self._session_timer is not None:
            self._session_timer.cancel()
        interval = self._refresh_interval
        if not interval or self.state == "ended":
            return
        loop = asyncio.get_running_loop()
        if self._we_refresh:
            self._session_timer = loop.call_later(interval / 2, self._refresh)
        else:  # RFC 4028 section 10: BYE if no refresh by the interval less a third (<=32 s)
            expiry = interval - min(32.0, interval / 3)
            self._session_timer = loop.call_later(expiry, self.hang_up, "session timer expired")

    def _refresh(self) -> None:
        method = "UPDATE" if "UPDATE" in self._peer_allow.upper() else "INVITE"
        request = self._request(method)
        request.headers.add("Session-Expires", f"{int(self._refresh_interval)};refresher=uac")
        request.headers.add("Supported", SUPPORTED)
        if method == "INVITE":
            request.headers.add("Content-Type", "application/sdp")
            request.body = str(self._local_sdp).encode()
        self._spawn(self._send(request, self._refreshed))

    def _refreshed(self, response: Response) -> None:
        if response.status >= 300 and response.status not in (491,):
            self.hang_up(f"session refresh refused: {response.status}")
        elif response.status >= 200:
            if response.cseq.method == "INVITE":
                self.endpoint.send_ack(self._ack_for(response), self._next_hop())
            self._restart_session_timer()

    # -- requests in the dialog ------------------------------------------------------------

    def request(self, request: Request, transaction: ServerTransaction | None) -> None:
        """A request in this dialog (``transaction`` None for an ACK)."""
        if request.method == "ACK":
            self._ack(request)
            return
        cseq = request.cseq.number
        if cseq <= self.remote_cseq and request.method != "CANCEL":
            transaction.respond(request.response(500, "CSeq out of order", to_tag=self.local_tag))
            return
        self.remote_cseq = max(self.remote_cseq, cseq)
        handler = {
            "BYE": self._bye,
            "INVITE": self._offer,
            "UPDATE": self._offer,
            "OPTIONS": self._options,
            "INFO": self._info,
            "NOTIFY": self._notify,
        }.get(request.method)
        if handler is None:
            response = request.response(501, to_tag=self.local_tag)
            response.headers.add("Allow", ALLOW)
            transaction.respond(response)
            return
        handler(request, transaction)

    def _ack(self, ack: Request) -> None:
        if self._invite_transaction is not None:
            self._invite_transaction.acknowledged()
        if self.state == "answered":
            self.state = "confirmed"
        if self._pending_offer is not None and ack.body:
            offer, self._pending_offer = self._pending_offer, None
            try:
                negotiated = accept_answer(offer, parse_sdp(ack.body))
            except SdpError as error:
                self.hang_up(f"the answer in the ACK is unusable: {error.reason}")
                return
            self._on_media_loop(self.media.update, negotiated)

    def _bye(self, request: Request, transaction: ServerTransaction) -> None:
        self._ended("the caller hung up")  # before the 200: once the caller has it, it is over
        transaction.respond(self._response(request, 200))

    def _offer(self, request: Request, transaction: ServerTransaction) -> None:
        """re-INVITE or UPDATE: a new offer (hold, a new address), or a session refresh."""
        pending = self._invite_transaction
        if request.method == "INVITE" and pending is not None and not pending.acked:
            transaction.respond(request.response(491, to_tag=self.local_tag))
            return
        interval = self._session_interval(request, transaction)
        if interval is None:
            return
        sdp = None
        if request.body:
            try:
                offer = parse_sdp(request.body)
                self._version += 1
                sdp, negotiated = answer(
                    offer,
                    self.server.media_address(self.peer),
                    self.media.port,
                    codecs=self.server.options.codecs,
                    session_id=self._session_id,
                    version=self._version,
                    srtp=self.server.options.srtp,
                    srtp_key=self._srtp_key,
                )
            except SdpError as error:
                response = request.response(error.status, to_tag=self.local_tag)
                response.headers.add("Warning", f'399 flowcat "{_quote(error.reason)}"')
                transaction.respond(response)
                return
            self._local_sdp = sdp
            self._on_media_loop(self.media.update, negotiated)
            logger.info(
                "%s %s: %s, media at %s:%d",
                request.method,
                self.call_id,
                "on hold" if negotiated.on_hold else "active",
                negotiated.remote_address,
                negotiated.remote_port,
                extra={"call_id": self.call_id},
            )
        elif request.method == "INVITE":  # no offer: ours goes in the 200, answer in the ACK
            sdp = self._pending_offer = with_version(self._local_sdp, self._version)
        if request.contact is not None:
            self.remote_target = request.contact.uri  # a target refresh
        ok = self._response(request, 200, sdp=sdp)
        self._add_session_timer(ok, request, interval)
        if request.method == "INVITE":
            self._invite_transaction = transaction
        transaction.respond(ok)

    def _options(self, request: Request, transaction: ServerTransaction) -> None:
        response = self._response(request, 200)
        response.headers.add("Accept", "application/sdp")
        transaction.respond(response)

    def _info(self, request: Request, transaction: ServerTransaction) -> None:
        """SIP INFO DTMF (``application/dtmf-relay``: ``Signal=5``)."""
        if request.content_type == "application/dtmf-relay":
            for line in request.body.decode("utf-8", "replace").splitlines():
                name, _, value = line.partition("=")
                digit = value.strip().upper()
                if name.strip().lower() == "signal" and len(digit) == 1:
                    self._on_media_loop(self._push_dtmf, digit)
        transaction.respond(self._response(request, 200))

    def _push_dtmf(self, digit: str) -> None:  # on the media loop
        call = self.media.call
        if call is not None and not call.done and digit in "0123456789*#ABCD":
            call.push(InputDTMFFrame(digit))

    def _notify(self, request: Request, transaction: ServerTransaction) -> None:
        """A NOTIFY about our REFER (RFC 3515): its message/sipfrag body is the status of
        the transferee's call to the target."""
        transaction.respond(self._response(request, 200))
        pending = self._transfer
        if pending is None or pending.done() or request.content_type != "message/sipfrag":
            return
        status_line = request.body.decode("utf-8", "replace").partition("\n")[0].split()
        if len(status_line) >= 2 and status_line[1].isdigit() and int(status_line[1]) >= 200:
            pending.set_result(int(status_line[1]) < 300)

    async def transfer(self, target: str) -> bool:
        """Transfer the caller to ``target`` with REFER (RFC 3515); once the transferee
        reports the target answered, hang up. False (the call goes on) if the REFER is
        refused or the transfer fails or is not reported within :data:`TRANSFER_SECS`."""
        if self.state not in ("answered", "confirmed"):
            return False
        refer = self._request("REFER")
        refer.headers.add("Refer-To", f"<{target}>")
        refer.headers.add("Referred-By", f"<{self.local.uri}>")
        self._transfer = asyncio.get_running_loop().create_future()
        response = await self.endpoint.final_response(refer, self._next_hop())
        if response.status >= 300:
            logger.info(
                "REFER for %s refused: %d %s", self.call_id, response.status, response.reason
            )
            return False
        try:
            async with asyncio.timeout(TRANSFER_SECS):
                done = await self._transfer
        except TimeoutError:
            done = False
        if done:
            self.hang_up(f"transferred to {target}")
        return done

    def cancelled(self) -> None:
        """A CANCEL for our INVITE came (answered 200 by the server)."""
        if self.state == "early":
            self._fail(487, "the caller cancelled")

    # -- requests we send ------------------------------------------------------------------

    def _request(self, method: str) -> Request:
        self.local_cseq = max(self.local_cseq, 0) + 1
        headers = Headers()
        transport = self._next_hop().transport
        headers.add("Via", self.endpoint.via(transport, self.peer))
        for route in self.route_set:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", self.local)
        headers.add("To", self.remote)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self.local_cseq} {method}")
        headers.add("Contact", self.endpoint.contact(transport, self.peer))
        headers.add("User-Agent", self.server.options.user_agent)
        return Request(method, self.remote_target, headers)

    def _next_hop(self) -> Peer:
        """Where requests in the dialog go: the first route (loose routing) or the
        remote target, over its ``transport`` (the INVITE's, if it names none)."""
        uri = self.remote_target
        if self.route_set:
            with contextlib.suppress(SipError):
                uri = NameAddr.parse(self.route_set[0]).uri
        named = uri.params.get("transport") or ("tls" if uri.scheme == "sips" else None)
        transport = named.upper() if named else self.peer.transport
        return Peer(transport, uri.host, uri.port or (5061 if transport == "TLS" else 5060))

    def _ack_for(self, response: Response) -> Request:
        ack = self._request("ACK")
        ack.headers.set("CSeq", f"{response.cseq.number} ACK")
        ack.headers.set("To", response.headers.get("To"))
        self.local_cseq -= 1  # an ACK takes no CSeq number of its own
        return ack

    async def _send(self, request: Request, on_final: Callable[[Response], None]) -> None:
        on_final(await self.endpoint.final_response(request, self._next_hop()))

    def hang_up(self, reason: str) -> None:
        """End the call from our side: BYE (or a failure response before the answer)."""
        if self.state == "ended":
            return
        if self.state == "early" and self.outbound:
            self.end_reason = reason
            self._cancel()  # the INVITE's 487 then ends the call, in dial()
            return
        if self.state == "early":
            self._fail(480, reason)
            return
        bye = self._request("BYE")
        bye.headers.add("Reason", f'SIP;cause=200;text="{_quote(reason)}"')
        self._ended(reason)
        self._spawn(self._send(bye, lambda response: None))

    def _ended(self, reason: str) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self.end_reason = reason
        if self._session_timer is not None:
            self._session_timer.cancel()
        self._close_media(reason)
        self.server.call_ended(self)

    def _close_media(self, reason: str) -> None:
        self._on_media_loop(self.media.close, reason)


async def _run(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'").replace("\r", " ").replace("\n", " ")[:100]
