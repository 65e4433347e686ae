"""The garbage-collection policy for a process that serves calls for weeks and never idles.

CPython's cyclic garbage collector stops every thread while it runs (on 3.13t too), which
on a busy server shows up as an audio glitch on every call at once. The runtime makes no
reference cycles on its hot path (frames, slabs and ring slots are freed by reference
counting) nor per call (a call breaks its cycles when it ends: see
:meth:`Call._let_go <flowcat_ft.call.Call._let_go>`), so in the steady state there is
nothing for the collector to find. Libraries may still make cycles. The policy:

1. at start-up, collect once and ``gc.freeze()`` everything that exists (modules, classes,
   the slab pool), so later collections do not scan it, and turn automatic collection off;
2. measure the garbage that may have built up: the growth of the number of objects the
   collector tracks since the last collection (``gc.get_count()[0]``: allocations less
   deallocations, on both builds). Frames, calls and their parts that reference counting
   frees cancel out; what cycles keep alive does not;
3. while calls are live, collect only when that growth has passed ``threshold`` objects,
   and at most once every ``min_interval`` seconds: one pause per interval at most, whose
   length is measured (on 3.13t about 0.15 µs per tracked object not frozen: a few ms with
   hundreds of calls);
4. once the process has had no call for ``idle_after`` seconds, collect whatever growth
   there is past a tenth of ``threshold`` (a pause then costs no call anything);
5. count every collection, its reason, what it found and its pause; ``gc.callbacks``
   also times every collection after start-up, whoever runs it (a library's
   ``gc.collect()`` counts as the last collection too).

Reading the counters stops nothing: on 3.13t ``gc.get_freeze_count()`` stops every thread
and walks the whole heap (a stop-the-world pause of milliseconds, growing with the heap),
so the number frozen is counted once, when the policy freezes, and a metrics scrape or a
status page reads that.

The settings are process-wide (``gc.disable()``, ``gc.freeze()``): the first policy to
start saves the embedding application's own (enabled or not, thresholds, whether it had
frozen objects) and the last to stop restores them; in between every runtime's policy
shares one record of the last collection and of which runtimes have live calls, so two
runtimes neither collect twice as often nor collect "idle" while the other has calls.
Objects frozen at start-up are unfrozen on the last stop unless the application had
frozen some itself (there is no unfreezing only ours): then they stay frozen.

``bench/gcpause.py`` measures hop latency with this policy against default ``gc``
(:class:`InterpreterGc`); ``bench.soak`` reports the pauses of a long run.
"""

from __future__ import annotations

import gc
import threading
import time

from flowcat_ft.metrics import Histogram

__all__ = ["GcPolicy", "InterpreterGc"]


class _ProcessGc:
    """The process-wide side of every running :class:`GcPolicy`.

    Threading contract: ``users``, ``saved``, ``frozen`` and the callback's registration
    change under ``lock`` (policies start and stop on any thread, and each runtime's
    housekeeper writes its count of live calls), and ``users`` is read under it too
    (``frozen``, an int, is read without it); ``baseline``
    and ``last`` are written by the gc callback, which runs on whichever thread
    collects, with every other thread stopped (3.13t) or holding no GIL (GIL build), and
    read without the lock; ``pauses`` has that callback as its single writer.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: dict[GcPolicy, int] = {}  # running policies -> their live calls
        self.saved: tuple[bool, tuple[int, ...], bool] | None = None
        self.frozen = 0  # objects frozen, counted when frozen at start-up
        self.baseline = 0  # gc.get_count()[0] after the last collection
        self.last = time.monotonic()  # when the last collection ended
        self.pauses = Histogram()  # every collection in the process after start-up
        self._started_ns = 0

    def acquire(self, policy: GcPolicy) -> None:
        with self.lock:
            if not self.users:
                self.saved = (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count() > 0)
                policy.collect("start-up")
                gc.freeze()
                self.frozen = gc.get_freeze_count()
                gc.disable()
                self.baseline, self.last = gc.get_count()[0], time.monotonic()
                gc.callbacks.append(self._on_gc)
            self.users[policy] = 0

    def release(self, policy: GcPolicy) -> None:
        with self.lock:
            if self.users.pop(policy, None) is None or self.users:
                return
            enabled, threshold, had_frozen = self.saved
            gc.callbacks.remove(self._on_gc)
            if not had_frozen:
                gc.unfreeze()
            gc.set_threshold(*threshold)
            if enabled:
                gc.enable()

    def idle(self) -> bool:
        """No running policy's runtime has a live call (call it under ``lock``)."""
        return not any(list(self.users.values()))

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
            return
        self.pauses.add(time.perf_counter_ns() - self._started_ns)
        self.baseline = gc.get_count()[0]
        self.last = time.monotonic()


_process = _ProcessGc()


class GcPolicy:
    """Runtime-controlled garbage collection (see the module docstring).

    ``threshold``: growth in tracked objects that makes a collection due while calls are
    live; ``min_interval``: seconds between collections while calls are live, at least;
    ``idle_after``: seconds without calls (in any runtime of the process) before an idle
    collection.

    Threading contract: :meth:`tick` runs on the runtime's housekeeper thread, and
    :meth:`start` and :meth:`stop` on the thread that starts and stops the runtime;
    ``_lock`` serialises this policy's collections and guards its counters, which readers
    may read without it.
    """

    def __init__(
        self, threshold: int = 20_000, min_interval: float = 30.0, idle_after: float = 1.0
    ) -> None:
        self.threshold = threshold
        self.min_interval = min_interval
        self.idle_after = idle_after
        self.collections = 0
        self.collected = 0
        self.reasons: dict[str, int] = {}
        self.pauses = Histogram()
        self._lock = threading.Lock()
        self._active = False

    @property
    def garbage(self) -> int:
        """Objects the collector tracks now, less those right after the last collection
        in the process: the most that collecting now could find."""
        return gc.get_count()[0] - _process.baseline

    def start(self) -> None:
        """Join the process-wide policy (the first to join collects, freezes what
        survives, and turns automatic collection off)."""
        if not self._active:
            self._active = True
            _process.acquire(self)

    def stop(self) -> None:
        """Leave it (the last to leave gives the application back its own settings)."""
        if self._active:
            self._active = False
            _process.release(self)

    def collect(self, reason: str) -> int:
        """Run a full collection now; returns the number of objects found unreachable."""
        with self._lock:
            start = time.perf_counter_ns()
            found = gc.collect()
            self.pauses.add(time.perf_counter_ns() - start)
            self.collections += 1
            self.collected += found
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        return found

    def tick(self, active_calls: int, idle_for: float) -> None:
        """Called by the runtime's housekeeper now and then: collect if due.

        ``active_calls``: the runtime's live calls; ``idle_for``: seconds since its last
        call ended (0 while it has calls)."""
        with _process.lock:
            if self not in _process.users:
                return
            _process.users[self] = active_calls
            idle = _process.idle()
        garbage = self.garbage
        if idle:
            if idle_for >= self.idle_after and garbage >= self.threshold // 10:
                self.collect("idle")
        elif garbage >= self.threshold and time.monotonic() - _process.last >= self.min_interval:
            self.collect("garbage")

    def snapshot(self) -> dict[str, object]:
        """Counters for metrics: this policy's collections (start-up included), the pauses
        of every collection in the process since start-up, whoever ran it
        (``process_pause``), the garbage that may be waiting now, and the objects frozen
        at start-up."""
        return {
            "automatic": gc.isenabled(),
            "collections": self.collections,
            "collected": self.collected,
            "reasons": dict(self.reasons),
            "pause": self.pauses.snapshot(),
            "process_pause": _process.pauses.snapshot(),
            "garbage": self.garbage,
            "frozen": _process.frozen,
        }


class InterpreterGc(GcPolicy):
    """Leaves the garbage collector as the interpreter runs it: automatic collections on,
    nothing frozen. For comparison (``bench/gcpause.py``), not for serving calls."""

    def start(self) -> None:
        """Do nothing: the policy never becomes active, so ticks never collect."""
