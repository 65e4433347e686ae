"""Who a request comes from: its peer, or, behind a trusted proxy, the client the proxy names.

A TLS-terminating proxy (nginx, haproxy, a cloud load balancer) connects to the server
itself, so every request's peer is the proxy; it says who the client is in
``X-Forwarded-For`` (``client, proxy1, proxy2``: each proxy appends the address it got the
request from) and how the client connected in ``X-Forwarded-Proto``. Anyone can send those
headers, so they are believed only from the addresses in :class:`TrustedProxies`: the
client is then the right-most address of ``X-Forwarded-For`` that is not a trusted proxy
(the addresses left of it were written by whoever sent the request, and could say
anything). From any other peer the headers are ignored.

Limits per client (:mod:`~flowcat_ft.transports.limits`) are kept by :func:`client_key`:
an IPv4 address, or an IPv6 address's /64 network (one host is given a whole /64, so
counting its addresses one by one would count nothing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from websockets.datastructures import Headers

__all__ = ["Client", "TrustedProxies", "client_key"]

type _Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Client(NamedTuple):
    """Where a request came from: ``address`` (the client's IP address, as text),
    ``secure`` (whether it reached us, or the proxy in front, over TLS) and ``host`` (the
    host it asked the proxy in front for, from ``X-Forwarded-Host``; empty without one)."""

    address: str
    secure: bool
    host: str = ""


class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed: IP
    addresses or networks (``10.0.0.5``, ``10.0.0.0/8``, ``::1``).

    Raises ``ValueError`` naming an entry that is neither. Immutable once made: shared by
    every event loop of a server.
    """

    def __init__(self, networks: Iterable[str] = ()) -> None:
        parsed: list[_Network] = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"{text!r} is not an IP address or network (such as 10.0.0.5 or 10.0.0.0/8)"
                ) from None
        self._networks = tuple(parsed)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self._networks)

    def client(self, peer: str, headers: Headers, tls: bool = False) -> Client:
        """The client of a request from ``peer`` with ``headers``, over TLS or not."""
        if peer not in self:
            return Client(peer, tls)
        client = peer
        hops = ",".join(headers.get_all("X-Forwarded-For")).split(",")
        for hop in reversed(hops):
            if client not in self:
                break
            ip = _ip(hop.strip())
            if ip is None:
                break  # a garbled entry: the last proxy's word is what we have
            client = str(ip)
        proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        host = headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        return Client(client, proto in ("https", "wss") if proto else tls, host)


def client_key(address: str) -> str:
    """What limits per client count by: the IPv4 address (also when written IPv4-mapped,
    ``::ffff:192.0.2.1``), or the IPv6 address's /64; anything else as it is."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address if ip is None else str(ip)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in ``text`` (IPv4-mapped IPv6 as IPv4; no IPv6 zone), or None."""
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
