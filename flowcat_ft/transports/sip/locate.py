"""Where requests to a SIP URI go: RFC 3263's NAPTR and SRV lookups, with dnspython.

A trunk is often named by its domain alone (``sip:+15551234@trunk.example.com``): the
domain's DNS says which transports and servers take SIP, and in what order.
:meth:`Locator.locate` follows RFC 3263 section 4:

- a numeric host: that address, the URI's port (5060, 5061 over TLS) and transport;
- a port in the URI: the host's addresses (A records), no NAPTR nor SRV;
- a ``transport`` in the URI: the SRV records of ``_sip._udp``/``_sip._tcp``/
  ``_sips._tcp`` for it;
- neither: the domain's NAPTR records (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``) in their
  order and preference, then the SRV records they point at; without NAPTR, the SRV
  records of each transport in turn (UDP, TCP, TLS; TLS only for ``sips:``);
- no SRV record at all: the host's addresses on the default port.

SRV records come in RFC 2782's order (lowest priority first, weighted at random within a
priority: dnspython's ``processing_order``), each target's addresses in turn; a caller
tries the next when one cannot be reached or answers 503 (section 4.3). Only the
transports we listen on are used (a peer must reach our Contact over the same one).
The resolver is dnspython's asyncio one (pure Python; the GIL stays off), with the
system's resolver configuration or the ``nameservers`` given.

Threading contract: a :class:`Locator` is used on the signalling loop only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

if TYPE_CHECKING:
    from flowcat_ft.sip.message import Uri

logger = logging.getLogger("flowcat_ft.sip")

__all__ = ["Locator", "Target"]

Target = tuple[str, str, int]
"""Where to send: transport (``"UDP"``, ``"TCP"``, ``"TLS"``), address, port."""

_NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
_SRV_PREFIX = {"UDP": "_sip._udp", "TCP": "_sip._tcp", "TLS": "_sips._tcp"}
_LOOKUP_SECS = 5.0


class Locator:
    """RFC 3263 server location (see the module docstring). ``transports``: the ones we
    listen on, upper case; ``nameservers``: ``"address"`` or ``"address:port"`` of DNS
    servers to ask (empty: the system's)."""

    def __init__(self, transports: tuple[str, ...], nameservers: tuple[str, ...] = ()) -> None:
        self.transports = transports
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:  # no /etc/resolv.conf: the system's
            self._resolver = dns.asyncresolver.Resolver(configure=False)  # lookups only
        if nameservers:
            self._resolver.nameservers = [_nameserver(text) for text in nameservers]
        self._resolver.lifetime = _LOOKUP_SECS

    async def locate(self, uri: Uri) -> list[Target]:
        """Where to send requests to ``uri``, in the order to try them; ``OSError`` naming
        the lookup if there is nowhere."""
        host, port = uri.host, uri.port
        secure = uri.scheme == "sips"
        named = uri.params.get("transport")
        transport = named.upper() if named else None
        if _is_ip(host) or port is not None:
            chosen = transport or ("TLS" if secure else "UDP")
            default = 5061 if chosen == "TLS" else 5060
            addresses = [host] if _is_ip(host) else await self._addresses(host)
            return [(chosen, address, port or default) for address in addresses]
        if transport is not None:
            services = [(transport, f"{_SRV_PREFIX.get(transport, '_sip._udp')}.{host}")]
        else:
            services = await self._naptr(host, secure) or [
                (name, f"{_SRV_PREFIX[name]}.{host}")
                for name in (("TLS",) if secure else ("UDP", "TCP", "TLS"))
                if name in self.transports
            ]
        for chosen, name in services:
            peers = await self._srv(chosen, name)
            if peers:
                return peers
        chosen = transport or ("TLS" if secure else "UDP")
        default = 5061 if chosen == "TLS" else 5060
        return [(chosen, address, default) for address in await self._addresses(host)]

    async def _naptr(self, domain: str, secure: bool) -> list[tuple[str, str]]:
        """The transports and SRV names the domain's NAPTR records give, in order."""
        found = []
        for record in await self._records(domain, "NAPTR"):
            service = record.service.decode("ascii", "replace").upper()
            transport = _NAPTR_SERVICES.get(service)
            if transport is None or transport not in self.transports:
                continue
            if secure and transport != "TLS":
                continue
            if record.flags.lower() == b"s":
                found.append((transport, record.replacement.to_text(omit_final_dot=True)))
        return found

    async def _srv(self, transport: str, name: str) -> list[Target]:
        peers = []
        for record in await self._records(name, "SRV"):
            target = record.target.to_text(omit_final_dot=True)
            if target in ("", "."):  # "no service here" (RFC 2782)
                continue
            try:
                addresses = await self._addresses(target)
            except OSError as error:
                logger.warning("SIP server %s (from %s) is unusable: %s", target, name, error)
                continue
            peers += [(transport, address, record.port) for address in addresses]
        return peers

    async def _records(self, name: str, kind: str) -> list:
        """The records of ``kind`` at ``name`` in processing order (none: an empty list)."""
        try:
            answer = await self._resolver.resolve(name, kind)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as error:
            logger.warning("DNS lookup of %s %s failed: %s", kind, name, error)
            return []
        return answer.rrset.processing_order()

    async def _addresses(self, host: str) -> list[str]:
        """The host's IPv4 addresses from DNS, else from the system (``/etc/hosts``);
        ``OSError`` if it has none."""
        addresses = [record.address for record in await self._records(host, "A")]
        if addresses:
            return addresses
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, None, family=socket.AF_INET, type=socket.SOCK_DGRAM
            )
        except OSError as error:
            raise OSError(f"cannot look up {host}: {error.strerror or error}") from None
        return list(dict.fromkeys(info[4][0] for info in infos))


def _nameserver(text: str) -> dns.nameserver.Do53Nameserver:
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    return dns.nameserver.Do53Nameserver(host, int(port) if port else 53)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
