"""Registering with a SIP trunk or PBX (RFC 3261 section 10), on the signalling loop.

A :class:`Registration` binds our Contact to the trunk's address of record: REGISTER,
answering a ``401``/``407`` digest challenge (:mod:`flowcat_ft.sip.digest`) and a ``423``
(Min-Expires), then again before the binding expires (at :data:`REFRESH_AT` of the
interval the registrar granted), and ``Expires: 0`` to remove it when the server stops or
has drained.
A registrar that refuses or does not answer is tried again after :data:`RETRY_SECS`,
and the failure is logged with the registrar's status and reason.

Threading contract: used only on the signalling loop; ``state`` and ``last_status`` are
written there and may be read from any thread (single attribute reads).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowcat_ft.sip.digest import Challenge, DigestError, authorization, strongest
from flowcat_ft.sip.message import Headers, NameAddr, Request, Response, SipError, Uri

if TYPE_CHECKING:
    from flowcat_ft.transports.sip.endpoint import Peer, SipEndpoint

logger = logging.getLogger("flowcat_ft.sip")

__all__ = ["REFRESH_AT", "RETRY_SECS", "Registration", "Trunk"]

REFRESH_AT = 0.8
"""Refresh a binding when this fraction of its interval has passed."""

RETRY_SECS = 30.0


@dataclass(frozen=True, kw_only=True)
class Trunk:
    """A registrar to register with: ``registrar`` is its URI (``sip:pbx.example.com``,
    ``;transport=tcp`` for TCP), ``user`` the account, ``password`` its secret (None: no
    authentication), ``domain`` the address of record's domain (default: the
    registrar's host), ``expires`` the interval asked for, in seconds."""

    registrar: str
    user: str
    password: str | None = None
    domain: str | None = None
    expires: int = 3600


class Registration:
    """Keeps one :class:`Trunk` registration alive (see the module docstring)."""

    def __init__(self, endpoint: SipEndpoint, trunk: Trunk, user_agent: str) -> None:
        self.endpoint = endpoint
        self.trunk = trunk
        self.user_agent = user_agent
        self.registrar = Uri.parse(trunk.registrar)
        domain = trunk.domain or self.registrar.host
        self.aor = NameAddr(Uri("sip", trunk.user, domain))
        self._call_id = f"{secrets.token_hex(8)}@flowcat"
        self._from_tag = secrets.token_hex(6)
        self._cseq = 0
        self._nc = 0
        self._challenge: tuple[int, Challenge] | None = None  # (status, challenge) last seen
        self.state = "unregistered"  # registered, failed, unregistering, unregistered
        self.last_status: str = ""
        self.expires = 0  # the interval granted
        self._task: asyncio.Task | None = None
        self._stopping: asyncio.Task | None = None
        self._peer: Peer | None = None  # the server that took our binding

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_registered())

    async def stop(self) -> None:
        """Stop refreshing and remove the binding (``Expires: 0``); a second call waits
        for the first one's un-REGISTER."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._unregister())
        await self._stopping

    async def _unregister(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.state == "registered":
            self.state = "unregistering"
            await self._register(0)
            self.state = "unregistered"

    async def _keep_registered(self) -> None:
        while True:
            granted = await self._register(self.trunk.expires)
            if granted:
                await asyncio.sleep(max(1.0, granted * REFRESH_AT))
            else:
                await asyncio.sleep(RETRY_SECS)

    async def _register(self, expires: int) -> int:
        """One registration (with its challenges); the interval granted, 0 if refused.
        Each server DNS gives for the registrar is tried in turn while one cannot be
        reached or is unavailable (RFC 3263 section 4.3), the one that took the binding
        first."""
        try:
            peers = await self.endpoint.locate(self.registrar)
        except OSError as error:
            return self._failed(f"cannot look up {self.registrar.host}: {error}")
        if self._peer in peers:
            peers.remove(self._peer)
            peers.insert(0, self._peer)
        for peer in peers:
            try:
                response, expires = await self._register_at(peer, expires)
            except DigestError as error:
                return self._failed(f"cannot answer the challenge: {error}")
            if response.status not in (408, 503):
                break
            logger.info("registrar %s: %d %s", peer, response.status, response.reason)
        if response.status >= 300:
            return self._failed(f"{response.status} {response.reason}")
        if not expires:
            logger.info("unregistered from %s", self.registrar)
            return 0
        granted = self._granted(response, expires, peer)
        self.state, self.expires, self._peer = "registered", granted, peer
        self.last_status = f"{response.status} {response.reason}"
        logger.info(
            "registered %s with %s (%s) for %d s", self.aor.uri, self.registrar, peer, granted
        )
        return granted

    async def _register_at(self, peer: Peer, expires: int) -> tuple[Response, int]:
        """REGISTER with one server, answering its challenges and its Min-Expires: the
        final response, and the interval asked for last. ``DigestError`` if a challenge
        cannot be answered."""
        for _ in range(3):  # a challenge, a stale nonce, a Min-Expires
            request = self._request(expires, peer)
            response = await self.endpoint.final_response(request, peer)
            if response.status in (401, 407) and self.trunk.password is not None:
                challenges = response.headers.values(
                    "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
                )
                self._challenge, self._nc = (response.status, strongest(challenges)), 0
                continue
            if response.status == 423:
                minimum = response.headers.get("Min-Expires") or ""
                if minimum.isdigit() and expires:
                    expires = int(minimum)
                    continue
            break
        return response, expires

    def _request(self, expires: int, peer: Peer) -> Request:
        """A REGISTER, with credentials for the last challenge (its nonce reused, with the
        next nonce count, until the registrar challenges again)."""
        self._cseq += 1
        endpoint = self.endpoint
        headers = Headers()
        headers.add("Via", endpoint.via(peer.transport, peer))
        headers.add("Max-Forwards", "70")
        headers.add("From", self.aor.with_tag(self._from_tag))
        headers.add("To", self.aor)
        headers.add("Call-ID", self._call_id)
        headers.add("CSeq", f"{self._cseq} REGISTER")
        headers.add("Contact", endpoint.contact(peer.transport, peer, user=self.trunk.user))
        headers.add("Expires", str(expires))
        headers.add("User-Agent", self.user_agent)
        registrar = Uri(self.registrar.scheme, None, self.registrar.host, self.registrar.port)
        if self._challenge is not None and self.trunk.password is not None:
            status, challenge = self._challenge
            self._nc += 1
            value = authorization(
                challenge, "REGISTER", str(registrar), self.trunk.user, self.trunk.password,
                nc=self._nc,
            )  # fmt: skip
            headers.add("Proxy-Authorization" if status == 407 else "Authorization", value)
        return Request("REGISTER", registrar, headers)

    def _granted(self, response: Response, asked: int, peer: Peer) -> int:
        """The interval the registrar granted our binding: our Contact's ``expires``, else
        the Expires header, else what we asked for."""
        ours = self.endpoint.contact(peer.transport, peer).uri
        for value in response.headers.values("Contact"):
            try:
                contact = NameAddr.parse(value)
            except SipError:
                continue
            seconds = contact.params.get("expires")
            same = (contact.uri.host, contact.uri.port) == (ours.host, ours.port)
            if same and seconds and seconds.isdigit():
                return int(seconds)
        header = response.headers.get("Expires") or ""
        return int(header) if header.isdigit() else asked

    def _failed(self, reason: str) -> int:
        self.state, self.last_status = "failed", reason
        logger.warning("registration with %s failed: %s", self.registrar, reason)
        return 0
