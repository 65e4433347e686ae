"""Limits per client address: connections being opened at once, and request rates.

A WebSocket server is cheap to keep busy: a connection that never finishes its handshake
holds a socket and some memory until the handshake timeout, and each offer to
``/webrtc/offer`` costs a companion real work. :class:`ClientLimits` keeps, for each
client (by :func:`~flowcat_ft.transports.clients.client_key`):

- the connections it has open that are not (yet) a call: counted from the moment they are
  accepted until they close or become a call (a call counts towards the server's
  ``max_calls`` instead, so that a carrier streaming many calls from a few addresses is
  not held to a per-address number);
- a token bucket per kind of request (``"handshake"``, or a page's path): ``per_minute``
  requests a minute on average, ``burst`` at once.

Memory is bounded: a client's count goes when it reaches zero, and the buckets are kept
least recently used first, at most ``max_buckets`` of them (a client pushed out starts
again with a full bucket, as one that stayed idle would have). The methods take the time
as an argument, so the arithmetic is tested without waiting.

Threading contract: every event loop of a server calls in; ``_open`` and ``_buckets`` are
read and written only under ``_lock`` (a plain dict and an OrderedDict, each changed by
one statement at a time under it), so the counts are exact on 3.13t.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ClientLimits", "Rate"]


@dataclass(frozen=True)
class Rate:
    """At most ``per_minute`` requests a minute on average, and ``burst`` at once."""

    per_minute: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst < 1:
            raise ValueError(f"a rate needs per_minute > 0 and burst >= 1, not {self}")

    @classmethod
    def per_minute_with_burst(cls, per_minute: float) -> Rate:
        """``per_minute``, with a quarter of a minute's worth allowed at once."""
        return cls(per_minute, max(1, round(per_minute / 4)))


class ClientLimits:
    """Connections being opened and request rates, per client; see the module docs.

    ``connections``: how many connections a client may have open that are not calls (None:
    no limit); ``rates``: a :class:`Rate` per kind of request.
    """

    def __init__(
        self,
        *,
        connections: int | None = None,
        rates: Mapping[str, Rate] | None = None,
        max_buckets: int = 65536,
    ) -> None:
        if connections is not None and connections < 1:
            raise ValueError(f"connections must be at least 1, not {connections}")
        self.connections = connections
        self.rates = dict(rates or {})
        self.max_buckets = max_buckets
        self.refused = 0  # requests and connections refused, for the server's stats
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def open(self, client: str) -> bool:
        """Count a connection of ``client``'s; False (not counted) if it has its fill."""
        with self._lock:
            count = self._open.get(client, 0)
            if self.connections is not None and count >= self.connections:
                self.refused += 1
                return False
            self._open[client] = count + 1
            return True

    def close(self, client: str) -> None:
        """A connection :meth:`open` counted has closed, or become a call."""
        with self._lock:
            count = self._open.pop(client) - 1
            if count:
                self._open[client] = count

    def take(self, kind: str, client: str, now: float) -> float:
        """Take a ``kind`` request of ``client``'s at time ``now`` (seconds, monotonic):
        0.0 if its rate allows it (or ``kind`` has no rate), else the seconds until it
        would."""
        rate = self.rates.get(kind)
        if rate is None:
            return 0.0
        key = (kind, client)
        with self._lock:
            tokens, then = self._buckets.pop(key, (rate.burst, now))
            tokens = min(rate.burst, tokens + (now - then) * rate.per_minute / 60)
            if tokens >= 1:
                tokens -= 1
                wait = 0.0
            else:
                wait = (1 - tokens) * 60 / rate.per_minute
                self.refused += 1
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        return wait

    def stats(self) -> dict[str, int]:
        """``clients`` with connections open that are not calls, those ``connections``,
        clients with a ``buckets`` kept, and requests and connections ``refused``."""
        with self._lock:
            return {
                "clients": len(self._open),
                "connections": sum(self._open.values()),
                "buckets": len(self._buckets),
                "refused": self.refused,
            }
