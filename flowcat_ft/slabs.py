"""Preallocated audio buffers ("slabs") and the pool that lends them.

Every slab is a fixed-size row of one numpy array allocated when the pool is made, so the
audio path takes and returns buffers without allocating. A slab is sized for 20 ms of
48 kHz stereo PCM16 by default (3,840 bytes).
"""

from __future__ import annotations

import threading
import time

import numpy as np

SLAB_BYTES = 3840
"""Default slab size: 20 ms of 48 kHz, 2-channel, 16-bit audio."""


class PoolExhaustedError(RuntimeError):
    """No slab was free: the pool is sized too small for the load, or slabs leak."""


class Slab:
    """One preallocated buffer, seen as bytes (``u8``) and as 16-bit samples (``pcm``).

    A slab is owned by one frame at a time; it goes back to its pool when that frame is
    freed (see :class:`~flowcat_ft.frames.AudioRawFrame`).
    """

    __slots__ = ("index", "pcm", "pool", "u8")

    def __init__(self, pool: SlabPool, index: int, row: np.ndarray) -> None:
        self.pool = pool
        self.index = index
        self.u8 = row
        self.pcm = row.view(np.int16)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the start of the slab."""
        n = len(data)
        if n > self.u8.shape[0]:
            raise ValueError(f"{n} bytes do not fit a {self.u8.shape[0]}-byte slab")
        self.u8[:n] = np.frombuffer(data, dtype=np.uint8)

    def release(self) -> None:
        """Give the slab back to its pool."""
        self.pool.release(self)


class SlabPool:
    """A fixed number of slabs, taken and returned from any thread.

    Exhaustion policy: :meth:`take` with ``wait=0`` (the default) raises
    :class:`PoolExhaustedError` at once and counts a drop, so a transport can drop the frame;
    with ``wait > 0`` the caller is back-pressured, waiting up to that many seconds for a
    slab to come back. The pool never grows.

    Threading contract: ``_free`` is a list used as a stack; ``list.pop`` and
    ``list.append`` are atomic on both builds (a per-object lock on 3.13t, the GIL
    otherwise), so any thread may take or release. ``drops`` and ``waits`` are written
    under ``_lock`` and read without it (approximate while running). ``_waiters`` counts
    threads blocked in :meth:`take`, under ``_lock``; a release that sees none skips the lock.
    """

    def __init__(self, count: int = 4096, slab_bytes: int = SLAB_BYTES) -> None:
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
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._waiters = 0
        self.drops = 0
        self.waits = 0

    @property
    def available(self) -> int:
        """How many slabs are free now."""
        return len(self._free)

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    def take(self, wait: float = 0.0) -> Slab:
        """Take a free slab; see the class docstring for what happens when none is free."""
        try:
            return self._free.pop()
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
                        # A release racing with our check may not see us waiting yet:
                        # wake up now and then to look again rather than trust it.
                        self._returned.wait(min(remaining, 0.005))
            finally:
                self._waiters -= 1

    def release(self, slab: Slab) -> None:
        """Return ``slab`` to the pool (called when the frame that owned it is freed)."""
        self._free.append(slab)
        if self._waiters:
            with self._lock:
                self._returned.notify()
