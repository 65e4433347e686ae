"""Measured load: whether the server has headroom for more calls, for readiness and admission.

A call count says little about load: one agent's calls cost ten times another's, and a
machine shared with other work has less to give. What a caller feels is delay, so the
server measures two delays, every ``interval``:

- **event-loop lag**: how long a callback handed to each event loop waits before it runs
  (``call_soon_threadsafe`` from the monitor's thread). A loop blocked or starved of CPU
  shows it at once: a callback still waiting counts for as long as it has waited.
- **stage queue delay**: how long the frames waiting for each stage thread will wait, by
  Little's law: frames waiting / frames the stage handled per second since the last sample.
  A stage that handled nothing while frames waited has been stalled since it last did.

:class:`Headroom` turns the worst of each into a verdict with hysteresis (Sans-I/O, tested
with made-up clocks): overloaded once either delay has stayed over its bound for
``trip_after`` seconds, back to having room once both have stayed under ``recover_below``
of their bounds for ``recover_after`` seconds. So one slow sample neither takes a server out
of rotation nor lets a loaded one flap in and out. This plays the part of LiveKit Agents'
``load_threshold`` (which reads CPU use); delay is what the calls feel, whatever its cause.

:class:`LoadMonitor` is the thread that samples and keeps the verdict.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flowcat_ft.loops import EventLoopThread
from flowcat_ft.runtime import Runtime

__all__ = ["Headroom", "LoadBounds", "LoadMonitor"]


@dataclass(frozen=True)
class LoadBounds:
    """How much delay the server takes before it stops taking calls.

    ``max_loop_lag`` and ``max_queue_delay`` are in seconds (None: not a bound);
    ``interval``: seconds between samples; the hysteresis: over a bound for ``trip_after``
    seconds trips it, under ``recover_below`` of every bound for ``recover_after`` seconds
    clears it.
    """

    max_loop_lag: float | None = 0.2
    max_queue_delay: float | None = 0.2
    interval: float = 0.25
    trip_after: float = 0.5
    recover_below: float = 0.5
    recover_after: float = 2.0


class Headroom:
    """The verdict on measured load, with hysteresis; fed one sample at a time.

    :attr:`pressure` is the worst delay as a fraction of its bound (1.0: at the bound);
    :attr:`ratio` what is left (1 - pressure, at least 0), the headroom an autoscaler reads.
    Single writer (:meth:`observe`); other threads read the attributes.
    """

    def __init__(self, bounds: LoadBounds) -> None:
        self.bounds = bounds
        self.overloaded = False
        self.loop_lag = 0.0
        self.queue_delay = 0.0
        self.pressure = 0.0
        self._over_since: float | None = None  # first of the samples over a bound in a row
        self._under_since: float | None = None  # first of the samples well under in a row

    @property
    def ratio(self) -> float:
        return max(0.0, 1.0 - self.pressure)

    def observe(self, now: float, loop_lag: float, queue_delay: float) -> bool:
        """Take a sample (``now`` in seconds, any monotonic clock); returns whether the
        server is overloaded after it."""
        bounds = self.bounds
        pressure = max(
            _fraction(loop_lag, bounds.max_loop_lag), _fraction(queue_delay, bounds.max_queue_delay)
        )
        self.loop_lag, self.queue_delay, self.pressure = loop_lag, queue_delay, pressure
        if pressure >= 1.0:
            self._over_since = now if self._over_since is None else self._over_since
        else:
            self._over_since = None
        if pressure < bounds.recover_below:
            self._under_since = now if self._under_since is None else self._under_since
        else:
            self._under_since = None
        if not self.overloaded:
            self.overloaded = (
                self._over_since is not None and now - self._over_since >= bounds.trip_after
            )
        else:
            self.overloaded = not (
                self._under_since is not None and now - self._under_since >= bounds.recover_after
            )
        return self.overloaded

    def describe(self) -> str:
        """The delays, for a person reading ``/ready``."""
        return f"event-loop lag {self.loop_lag:.3f} s, stage queue delay {self.queue_delay:.3f} s"


def _fraction(value: float, bound: float | None) -> float:
    return 0.0 if bound is None else value / bound


class _Ping:
    """A callback handed to one event loop: when it was sent, and when the loop ran it.

    ``answered`` is written once by the loop's thread and read by the monitor's."""

    __slots__ = ("answered", "sent")

    def __init__(self) -> None:
        self.sent = time.monotonic()
        self.answered: float | None = None

    def answer(self) -> None:
        self.answered = time.monotonic()

    def lag(self, now: float) -> float:
        answered = self.answered
        return (answered if answered is not None else now) - self.sent


class LoadMonitor:
    """Samples event-loop lag and stage queue delay every ``bounds.interval`` on its own
    thread, and keeps the :class:`Headroom` verdict.

    Threading contract: only the monitor's thread writes :attr:`headroom` and its own
    bookkeeping; other threads read :attr:`headroom`'s attributes (each a plain value,
    a moment old at worst). :meth:`start` and :meth:`stop` from one thread.
    """

    def __init__(
        self, bounds: LoadBounds, loops: Sequence[EventLoopThread], runtime: Runtime
    ) -> None:
        self.bounds = bounds
        self.headroom = Headroom(bounds)
        self._loops = list(loops)
        self._runtime = runtime
        self._pings: list[_Ping | None] = [None] * len(self._loops)
        self._stages: dict[str, tuple[float, int, float]] = {}  # name: (at, frames, progress)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowcat-load", daemon=True)

    def start(self) -> LoadMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.bounds.interval):
            now = time.monotonic()
            self.headroom.observe(now, self._loop_lag(now), self._queue_delay(now))

    def _loop_lag(self, now: float) -> float:
        """The worst lag of the loops: each answered ping's, or how long an unanswered one
        has waited; then a new ping to every loop that has answered."""
        worst = 0.0
        for i, io in enumerate(self._loops):
            ping = self._pings[i]
            if ping is not None:
                worst = max(worst, ping.lag(now))
                if ping.answered is None:
                    continue
            ping = self._pings[i] = _Ping()
            try:
                io.loop.call_soon_threadsafe(ping.answer)
            except RuntimeError:  # the loop is closed: the server is stopping
                self._pings[i] = None
        return worst

    def _queue_delay(self, now: float) -> float:
        """The worst stage's queue delay (see the module docstring)."""
        worst = 0.0
        seen: dict[str, tuple[float, int, float]] = {}
        for stage in self._runtime.stages:
            name, depth, frames = stage.name, stage.queue_depth(), stage.metrics.frames
            at, before, progress = self._stages.get(name, (now, frames, now))
            if depth == 0 or frames != before:
                progress = now
            seen[name] = (now, frames, progress)
            if depth == 0:
                continue
            rate = (frames - before) / (now - at) if now > at else 0.0
            worst = max(worst, depth / rate if rate > 0 else now - progress)
        self._stages = seen
        return worst

    def snapshot(self) -> dict[str, object]:
        """The latest sample and verdict, as plain data."""
        headroom = self.headroom
        return {
            "overloaded": headroom.overloaded,
            "headroom": round(headroom.ratio, 3),
            "loop_lag_s": round(headroom.loop_lag, 4),
            "queue_delay_s": round(headroom.queue_delay, 4),
        }
