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
item or the producer sees ``_parked`` and rings. As a second line of defence an owner may
:meth:`~Doorbell.nudge` the doorbell now and then (the runtime's housekeeper does, twice a
second). A nudge wakes only a consumer that has stayed in the same park since the previous
nudge, so a park that a nudge ends with work waiting really was a lost wake-up, not a
producer caught between publishing and ringing; it is counted in ``missed_wakeups``,
which the tests require to stay zero.

Parking is a blocking read of a pipe, which a ring writes a byte to: measured on the
2-core VM this project runs on, a hand-off through a pipe costs each side ~8 µs of CPU,
through a ``queue.SimpleQueue`` ~20-25 µs, and any wait with a timeout (a futex or a
``poll`` with a timer) as much. So a park without a deadline reads with no timeout; only
a wait given a ``timeout`` polls the pipe with one.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
import weakref
from collections.abc import Callable

STRATEGIES = ("adaptive", "block", "spin", "yield")
# A ring writes this byte; a nudge writes the number of the park it ends, 1 to 255.
_RING = b"\x00"


def default_strategy() -> str:
    """``adaptive`` on free-threaded builds; ``block`` under the GIL, where a spinning
    consumer would hold the GIL its producer needs."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return "block" if gil else "adaptive"


class Doorbell:
    """One consumer waits here; any number of producers ring.

    Threading contract: ``_parked`` and ``_episode`` are written by the consumer and read
    by producers and the nudger (the ordering argument is in the module docstring; the
    consumer numbers each park in ``_episode`` before it sets ``_parked``). The pipe
    (``_read``, ``_write``, made on the first park and closed when the doorbell is freed)
    carries wake-up bytes: producers write ``_RING``, the nudger writes the number of the
    park it ends (a full pipe already holds a wake-up, so a write that would block is
    dropped); the consumer reads. ``_nudged_episode`` is the nudger's own (one nudger per
    doorbell). The counters (``parks``, ``wakeups``, ``missed_wakeups``) and ``_gap_ns``
    are written by the consumer only.
    """

    __slots__ = (
        "__weakref__",
        "_episode",
        "_gap_ns",
        "_nudged_episode",
        "_parked",
        "_poll",
        "_read",
        "_write",
        "max_spin_ns",
        "missed_wakeups",
        "parks",
        "strategy",
        "wakeups",
    )

    def __init__(self, strategy: str | None = None, max_spin_us: float = 50.0) -> None:
        strategy = strategy or default_strategy()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown wait strategy {strategy!r}; expected one of {STRATEGIES}")
        self.strategy = strategy
        self.max_spin_ns = int(max_spin_us * 1000)
        self._read = self._write = -1
        self._poll: select.poll | None = None
        self._parked = False
        self._episode = 0
        self._nudged_episode = -1
        self._gap_ns = 1 << 62
        self.parks = 0
        self.wakeups = 0
        self.missed_wakeups = 0

    # -- producer side ---------------------------------------------------------------------

    def ring(self) -> None:
        """Wake the consumer if it is parked. Call after publishing; cheap when it is not."""
        if self._parked:
            self._send(_RING)

    def nudge(self) -> None:
        """Wake the consumer if it has been parked since the previous nudge, to look for
        work a lost wake-up left. Call from one thread, at an interval."""
        episode = self._episode
        if self._parked and episode == self._nudged_episode:
            self._send(_nudge_byte(episode))
        self._nudged_episode = episode

    def _send(self, byte: bytes) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._write, byte)

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
        if self._read < 0:
            self._open()
        while True:
            self._episode += 1
            self._parked = True
            if has_work():
                self._parked = False
                return True
            if deadline is None:
                self.parks += 1
                woken = os.read(self._read, 512)
            else:
                wait_ms = (deadline - time.perf_counter_ns()) / 1e6
                if wait_ms <= 0:
                    self._parked = False
                    return False
                self.parks += 1
                ready = self._poll.poll(wait_ms)
                woken = os.read(self._read, 512) if ready else b""
            self._parked = False
            if has_work():
                if _RING in woken:
                    self.wakeups += 1
                elif _nudge_byte(self._episode) in woken:
                    self.missed_wakeups += 1
                return True

    def _open(self) -> None:
        """Make the pipe; the write end never blocks (see ``_send``)."""
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)
        weakref.finalize(self, _close, self._read, self._write)


def _nudge_byte(episode: int) -> bytes:
    return bytes((1 + episode % 255,))


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
