"""The garbage-collection policy: no automatic collection while calls run.

CPython's cyclic garbage collector stops every thread while it runs (on 3.13t too), which
on a busy server shows up as an audio glitch on every call at once. The runtime's hot path
makes no reference cycles (frames, slabs and ring slots are freed by reference counting),
so automatic collection is not needed there. The policy:

1. at start-up, collect once and ``gc.freeze()`` everything that exists (modules, classes,
   the slab pool), so later collections do not scan it;
2. turn automatic collection off while the runtime runs;
3. collect only when the runtime decides: when it has been idle (no calls) for
   ``idle_after`` seconds and garbage may have built up, and when a call ends if
   ``max_interval`` seconds have passed since the last collection (so a server that is
   never idle still reclaims cycles that processors or libraries create);
4. count every collection, its reason and its pause (``collections``, ``pauses``).

On stop, automatic collection is restored as it was. ``bench/gcpause.py`` measures hop
latency with this policy against default ``gc`` (:class:`InterpreterGc`).

Measured on 3.13t: frozen objects still cost a collection about a quarter of what they
cost unfrozen (on the GIL build, next to nothing), so a collection during calls is short,
not free; hence collections wait for idle time, or for ``max_interval``.
"""

from __future__ import annotations

import gc
import threading
import time

from flowcat_ft.metrics import Histogram


class GcPolicy:
    """Runtime-controlled garbage collection (see the module docstring).

    Threading contract: :meth:`call_ended` runs on stage threads and only sets ``_dirty``;
    :meth:`tick` runs on the runtime's housekeeper thread; ``_lock`` serialises collections
    and guards the counters, which readers may read without it.
    """

    def __init__(self, idle_after: float = 1.0, max_interval: float = 60.0) -> None:
        self.idle_after = idle_after
        self.max_interval = max_interval
        self.collections = 0
        self.collected = 0
        self.reasons: dict[str, int] = {}
        self.pauses = Histogram()
        self._lock = threading.Lock()
        self._was_enabled = gc.isenabled()
        self._last = time.monotonic()
        self._dirty = False
        self._active = False

    def start(self) -> None:
        """Collect, freeze what survives, and turn automatic collection off."""
        self._was_enabled = gc.isenabled()
        self.collect("start-up")
        gc.freeze()
        gc.disable()
        self._active = True

    def stop(self) -> None:
        """Give garbage collection back to the interpreter's defaults."""
        if self._active:
            self._active = False
            gc.unfreeze()
            if self._was_enabled:
                gc.enable()

    def collect(self, reason: str) -> int:
        """Run a full collection now; returns the number of objects found unreachable."""
        with self._lock:
            start = time.perf_counter_ns()
            found = gc.collect()
            self.pauses.add(time.perf_counter_ns() - start)
            self.collections += 1
            self.collected += found
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            self._last = time.monotonic()
            self._dirty = False
        return found

    def call_ended(self) -> None:
        """A call ended, so garbage may exist (called on a stage thread: never collects)."""
        self._dirty = True

    def tick(self, active_calls: int, idle_for: float) -> None:
        """Called by the runtime's housekeeper thread now and then: collect if due."""
        if not (self._active and self._dirty):
            return
        if active_calls == 0 and idle_for >= self.idle_after:
            self.collect("idle")
        elif time.monotonic() - self._last >= self.max_interval:
            self.collect("interval")

    def snapshot(self) -> dict[str, object]:
        return {
            "automatic": gc.isenabled(),
            "collections": self.collections,
            "collected": self.collected,
            "reasons": dict(self.reasons),
            "pause": self.pauses.snapshot(),
            "frozen": gc.get_freeze_count(),
        }


class InterpreterGc(GcPolicy):
    """Leaves the garbage collector as the interpreter runs it: automatic collections on,
    nothing frozen. For comparison (``bench/gcpause.py``), not for serving calls."""

    def start(self) -> None:
        """Do nothing: the policy never becomes active, so ticks never collect."""
