"""Wait strategies: how a consumer thread waits for its rings, and how producers wake it.

A stage thread consumes several rings; when all are empty it waits on its
:class:`Doorbell`, and every producer rings that doorbell after publishing. As in the LMAX
Disruptor, how to wait is a named, measured choice (see ``bench/handoff.py``):

``"block"``
    park at once; the cheapest in CPU, a futex wake-up (tens of µs) per hand-off.
``"spin"``
    never park; the lowest latency, and a whole core burnt even when idle.
``"yield"``
    spin, yielding the CPU between looks (``os.sched_yield``); never parks.
``"adaptive"`` (the default on 3.13t)
    spin only while frames arrived recently: the doorbell keeps a moving average of how
    long its waits lasted, spins for up to twice that (capped at ``max_spin_us``) when it
    is short, and otherwise parks at once. Busy, the thread spins through the short gaps
    between frames; idle or lightly loaded, it sleeps.

Lost wake-ups: the consumer announces that it is about to park (``_parked = True``), looks
at its rings once more, and only then sleeps; a producer publishes first and then reads
``_parked``. Both are attribute accesses which on 3.13t are sequentially consistent atomic
operations (see :mod:`flowcat_ft.rings`), so either the consumer's second look sees the
item or the producer sees ``_parked`` and rings. The park still times out after
``park_timeout`` seconds as a second line of defence; a timed-out park that finds work is
counted in ``missed_wakeups``, which the tests require to stay zero.
"""

from __future__ import annotations

import os
import queue
import sys
import time
from collections.abc import Callable

STRATEGIES = ("adaptive", "block", "spin", "yield")


def default_strategy() -> str:
    """``adaptive`` on free-threaded builds; ``block`` under the GIL, where a spinning
    consumer would hold the GIL its producer needs."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return "block" if gil else "adaptive"


class Doorbell:
    """One consumer waits here; any number of producers ring.

    Threading contract: ``_parked`` is written by the consumer and read by producers (the
    ordering argument is in the module docstring). ``_bell`` is a ``queue.SimpleQueue`` of
    wake-up tokens: producers put, the consumer gets. The counters (``parks``, ``wakeups``,
    ``missed_wakeups``) and ``_gap_ns`` are written by the consumer only.
    """

    __slots__ = (
        "_bell",
        "_gap_ns",
        "_parked",
        "max_spin_ns",
        "missed_wakeups",
        "park_timeout",
        "parks",
        "strategy",
        "wakeups",
    )

    def __init__(
        self, strategy: str | None = None, max_spin_us: float = 50.0, park_timeout: float = 0.1
    ) -> None:
        strategy = strategy or default_strategy()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown wait strategy {strategy!r}; expected one of {STRATEGIES}")
        self.strategy = strategy
        self.max_spin_ns = int(max_spin_us * 1000)
        self.park_timeout = park_timeout
        self._bell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._parked = False
        self._gap_ns = 1 << 62
        self.parks = 0
        self.wakeups = 0
        self.missed_wakeups = 0

    # -- producer side ---------------------------------------------------------------------

    def ring(self) -> None:
        """Wake the consumer if it is parked. Call after publishing; cheap when it is not."""
        if self._parked:
            self._bell.put(None)

    # -- consumer side ---------------------------------------------------------------------

    def wait(self, has_work: Callable[[], bool], timeout: float | None = None) -> bool:
        """Return once ``has_work()`` is true (True), or after ``timeout`` seconds (False)."""
        start = time.perf_counter_ns()
        deadline = None if timeout is None else start + int(timeout * 1e9)
        strategy = self.strategy
        if strategy == "adaptive":
            gap = self._gap_ns
            spin_until = start + min(2 * gap, self.max_spin_ns) if gap < self.max_spin_ns else 0
        elif strategy == "block":
            spin_until = 0
        else:
            spin_until = deadline if deadline is not None else 1 << 63
        found = self._spin(has_work, spin_until, strategy == "yield")
        if not found:
            found = self._park(has_work, deadline)
        if strategy == "adaptive":
            # Moving average of how long waits last, with weight 1/4 for the newest.
            self._gap_ns += (time.perf_counter_ns() - start - self._gap_ns) >> 2
        return found

    def _spin(self, has_work: Callable[[], bool], until: int, yielding: bool) -> bool:
        now = time.perf_counter_ns
        while now() < until:
            if has_work():
                return True
            if yielding:
                os.sched_yield()
        return False

    def _park(self, has_work: Callable[[], bool], deadline: int | None) -> bool:
        bell = self._bell
        while True:
            self._parked = True
            if has_work():
                self._parked = False
                return True
            wait = self.park_timeout
            if deadline is not None:
                wait = min(wait, (deadline - time.perf_counter_ns()) / 1e9)
                if wait <= 0:
                    self._parked = False
                    return False
            self.parks += 1
            try:
                bell.get(timeout=wait)
                rung = True
            except queue.Empty:
                rung = False
            self._parked = False
            # A token that arrived just after the timeout still means a producer rang.
            rung = _drain(bell) or rung
            if has_work():
                if rung:
                    self.wakeups += 1
                else:
                    self.missed_wakeups += 1
                return True


def _drain(bell: queue.SimpleQueue[None]) -> bool:
    """Discard tokens left by several producers ringing one wait; True if there were any."""
    drained = False
    try:
        while True:
            bell.get_nowait()
            drained = True
    except queue.Empty:
        return drained
