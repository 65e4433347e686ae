"""Preallocated audio buffers ("slabs") and the pool that lends them.

Every slab is a fixed-size row of one numpy array allocated when the pool is made, so the
audio path takes and returns buffers without allocating. A slab is sized for 20 ms of
48 kHz stereo PCM16 by default (3,840 bytes).
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np

SLAB_BYTES = 3840
"""Default slab size: 20 ms of 48 kHz, 2-channel, 16-bit audio."""


class PoolExhaustedError(RuntimeError):
    """No slab was free: the pool is sized too small for the load, or slabs leak."""


class SlabReleasedError(RuntimeError):
    """A slab was given back that is not lent out: released twice, or never taken."""


class Slab:
    """One preallocated buffer, seen as bytes (``u8``) and as 16-bit samples (``pcm``).

    A slab is owned by one frame at a time; it goes back to its pool when that frame is
    freed (see :class:`~flowcat_ft.frames.AudioRawFrame`). Giving it back twice raises
    :class:`SlabReleasedError` rather than putting it in the pool twice (which would lend
    one buffer to two frames).

    ``lent`` is True while a frame (or a caller of :meth:`SlabPool.take`) holds the slab:
    written by the taking thread, then by the releasing one, which the frame's hand-off
    between them orders. Two releases racing on two threads at the same instant can both
    see it True (a flag, not an atomic exchange, which would cost an allocation per frame).
    """

    __slots__ = ("index", "lent", "pcm", "pool", "u8")

    def __init__(self, pool: SlabPool, index: int, row: np.ndarray) -> None:
        self.pool = pool
        self.index = index
        self.u8 = row
        self.pcm = row.view(np.int16)
        self.lent = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the start of the slab."""
        n = len(data)
        if n > self.u8.shape[0]:
            raise ValueError(f"{n} bytes do not fit a {self.u8.shape[0]}-byte slab")
        self.u8[:n] = np.frombuffer(data, dtype=np.uint8)

    def release(self) -> None:
        """Give the slab back to its pool; :class:`SlabReleasedError` if it is free already."""
        self.pool.release(self)


class SlabPool:
    """A fixed number of slabs, taken and returned from any thread.

    Exhaustion policy: :meth:`take` with ``wait=0`` (the default) raises
    :class:`PoolExhaustedError` at once and counts a drop, so a transport can drop the frame;
    with ``wait > 0`` the caller is back-pressured, waiting up to that many seconds for a
    slab to come back. The pool never grows.

    Per-thread caches: each thread that takes or releases slabs keeps up to ``2 * cache``
    free slabs of its own, refilled from (and spilled to) the shared list ``cache`` at a
    time, so most takes and releases touch no object another thread touches (on 3.13t a
    contended list costs a lock hand-off, with ``sched_yield`` spins). ``cache`` defaults
    to 32, or less in a small pool (none under 128 slabs), so caches hold at most a few
    per cent of the pool; a thread that finds the shared list empty takes from the other
    threads' caches before it gives up, and a thread's cache goes back to the shared list
    when the thread ends.

    Threading contract: ``_free`` (the shared list) is changed only under ``_lock`` (in a
    pool without caches a single pop or append, each atomic, may go without it), a
    cache list by its own thread, except that any thread may pop from any cache when the
    shared list is empty (each ``list.pop`` and ``list.append`` is atomic on both builds:
    a per-object lock on 3.13t, the GIL otherwise, so owner and thief never get the same
    slab). ``_caches`` lists every live cache, appended under ``_lock``. ``drops`` and
    ``waits`` are written under ``_lock`` and read without it (approximate while running).
    ``_waiters`` counts threads blocked in :meth:`take`, under ``_lock``; while there are
    any, releases go to the shared list (where waiters look) and wake one. ``_lock`` is
    reentrant: a frame's finalizer may run, and release its slab, on a thread that holds it
    (on 3.13t a thread frees what other threads let go of when it next runs Python code,
    which may be inside the lock's condition wait).
    """

    def __init__(
        self, count: int = 4096, slab_bytes: int = SLAB_BYTES, cache: int | None = None
    ) -> None:
        if count <= 0 or slab_bytes <= 0 or slab_bytes % 2:
            raise ValueError("a pool needs count > 0 and an even slab_bytes > 0")
        self.capacity = count
        self.slab_bytes = slab_bytes
        self.u8 = np.zeros((count, slab_bytes), dtype=np.uint8)
        """Every slab's bytes, one row per slab (``slab.index``): batch kernels gather rows
        from here and scatter results back, one numpy call for many calls' frames."""
        self.pcm = self.u8.view(np.int16)
        """The same memory as 16-bit samples."""
        self._slabs = tuple(Slab(self, i, self.u8[i]) for i in range(count))
        self._free = list(reversed(self._slabs))
        self.cache = min(32, count // 128) if cache is None else cache
        self._local = threading.local()
        self._caches: list[list[Slab]] = []
        # Reentrant: a frame freed on a thread that holds it (a waiter woken in
        # ``_wait_for_slab``, where freed objects' finalizers may run) releases its slab.
        self._lock = threading.RLock()
        self._returned = threading.Condition(self._lock)
        self._waiters = 0
        self.drops = 0
        self.waits = 0

    @property
    def available(self) -> int:
        """How many slabs are free now (in the shared list and in threads' caches)."""
        return len(self._free) + sum(len(cache) for cache in list(self._caches))

    @property
    def in_use(self) -> int:
        return self.capacity - self.available

    def take(self, wait: float = 0.0) -> Slab:
        """Take a free slab; see the class docstring for what happens when none is free."""
        slab = self._take(wait)
        slab.lent = True
        return slab

    def _take(self, wait: float) -> Slab:
        cache = self._my_cache()
        if cache is not None:
            try:
                return cache.pop()
            except IndexError:
                pass
            with self._lock:
                refill = self._free[-self.cache :]
                del self._free[-self.cache :]
            if refill:
                slab = refill.pop()
                cache += refill
                return slab
            slab = self._steal()
            if slab is not None:
                return slab
        else:
            try:
                return self._free.pop()  # no caches: no slice of _free is ever taken
            except IndexError:
                pass
        if wait > 0:
            slab = self._wait_for_slab(wait)
            if slab is not None:
                return slab
        with self._lock:
            self.drops += 1
        raise PoolExhaustedError(
            f"all {self.capacity} slabs are in use; raise the pool size or find the leak"
        )

    def release(self, slab: Slab) -> None:
        """Return ``slab`` to the pool (called when the frame that owned it is freed).

        Raises :class:`SlabReleasedError`, leaving the pool as it was, if the slab is free
        already (released twice) or is not this pool's."""
        if slab.pool is not self:
            raise SlabReleasedError(f"slab {slab.index} belongs to another pool")
        if not slab.lent:
            raise SlabReleasedError(
                f"slab {slab.index} was released twice (it is free already): a frame's slab "
                "given back by hand and again when the frame was freed?"
            )
        slab.lent = False
        cache = self._my_cache()
        if cache is None:
            self._free.append(slab)
            if self._waiters:
                with self._lock:
                    self._returned.notify()
            return
        if self._waiters:
            with self._lock:
                self._free.append(slab)
                self._returned.notify()
            return
        cache.append(slab)
        if len(cache) > 2 * self.cache:
            # One pop at a time: a thief may pop from this cache meanwhile (see _steal).
            spill = _pop_up_to(cache, self.cache)
            with self._lock:
                self._free += spill

    def _my_cache(self) -> list[Slab] | None:
        """This thread's cache (made on first use), or None where the pool has none."""
        if not self.cache:
            return None
        try:
            return self._local.holder.slabs
        except AttributeError:
            holder = self._local.holder = _CacheHolder()
            with self._lock:
                self._caches.append(holder.slabs)
            weakref.finalize(holder, self._retire, holder.slabs)
            return holder.slabs

    def _retire(self, cache: list[Slab]) -> None:
        """A thread ended: its cached slabs go back to the shared list."""
        with self._lock:
            self._caches.remove(cache)
            self._free += _pop_up_to(cache, len(cache))
            if self._waiters:
                self._returned.notify_all()

    def _steal(self) -> Slab | None:
        for cache in list(self._caches):
            try:
                return cache.pop()
            except IndexError:
                continue
        return None

    def _wait_for_slab(self, wait: float) -> Slab | None:
        deadline = time.monotonic() + wait
        with self._lock:
            self.waits += 1
            self._waiters += 1
            try:
                while True:
                    try:
                        return self._free.pop()
                    except IndexError:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return None
                        # A release racing with our check may not see us waiting yet
                        # (and caches may still hold slabs): look again now and then.
                        self._returned.wait(min(remaining, 0.005))
                        slab = self._steal()
                        if slab is not None:
                            return slab
            finally:
                self._waiters -= 1


def _pop_up_to(slabs: list[Slab], count: int) -> list[Slab]:
    """Pop up to ``count`` slabs off ``slabs``, each pop atomic (others may pop too)."""
    popped = []
    for _ in range(count):
        try:
            popped.append(slabs.pop())
        except IndexError:
            break
    return popped


class _CacheHolder:
    """Holds one thread's cache in the pool's thread-local; when the thread ends and the
    holder goes, a finalizer gives the slabs back."""

    __slots__ = ("__weakref__", "slabs")

    def __init__(self) -> None:
        self.slabs: list[Slab] = []
