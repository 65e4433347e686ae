"""UDP sockets on an event loop without asyncio's datagram transports: SIP's signalling
socket and each call's RTP and RTCP sockets.

asyncio's datagram transport reads one datagram per pass of the loop. Here a socket is a
reader of the loop (``loop.add_reader(sock, read_datagrams, sock, handle, limit)``) and a
wake-up reads every datagram waiting on it, up to ``limit``: cheaper per datagram, and
after a stall of the loop everything that came meanwhile is read before the loop's timers
run. The bound keeps one flooded socket from holding the loop: what is left waits for
the loop's next pass. Sending is one ``sendto``; a datagram the socket cannot take now is
dropped (RTP does not wait for it, SIP over UDP retransmits).

Threading contract: a socket is read and written only on the loop it is a reader of.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

logger = logging.getLogger("flowcat_ft.sip")

__all__ = ["MAX_DATAGRAM", "bind", "read_datagrams", "send_datagram"]

MAX_DATAGRAM = 65535
"""The largest UDP payload."""


def bind(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host`` (IPv6 if it has a colon) and ``port``
    (0: a free one); ``OSError`` if it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def read_datagrams(sock: socket.socket, handle: Callable[[bytes, tuple], None], limit: int) -> None:
    """Hand ``handle`` each datagram waiting on ``sock`` with its source address, up to
    ``limit`` (the rest on the loop's next pass)."""
    for _ in range(limit):
        try:
            data, source = sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            return
        except OSError:
            continue  # an ICMP error of an earlier send (the peer not listening yet)
        handle(data, source)


def send_datagram(sock: socket.socket, data: bytes, address: tuple[str, int]) -> bool:
    """Send one datagram; False if it was dropped (a full socket buffer, an ICMP error
    of an earlier send)."""
    try:
        sock.sendto(data, address)
    except OSError as error:
        logger.debug("UDP datagram to %s not sent: %s", address, error)
        return False
    return True
