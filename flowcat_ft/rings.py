"""A bounded, lock-free, single-producer single-consumer ring.

Memory-ordering argument (why this is correct without a lock)
-------------------------------------------------------------
The ring is Lamport's SPSC queue. ``_tail`` counts items ever pushed and is written only by
the producer; ``_head`` counts items ever popped and is written only by the consumer. A
slot ``i`` is written by the producer only while ``tail - head < capacity`` says the
consumer is done with it, and read by the consumer only while ``head < tail`` says the
producer has filled it. Correctness needs two orderings:

1. the producer's slot store happens-before its ``_tail`` store, and the consumer's
   ``_tail`` load happens-before its slot load (so a published item is seen whole);
2. the consumer's slot load and clear happen-before its ``_head`` store, and the producer's
   ``_head`` load happens-before its slot store (so a slot is not overwritten while read).

On free-threaded CPython 3.13 each of these accesses is a separate atomic operation with at
least release (stores) and acquire (loads) semantics: a ``__slots__`` attribute store takes
the object's per-object mutex (a sequentially consistent compare-exchange) around a release
store, and the load is a sequentially consistent atomic load (``Python/structmember.c``);
``list`` item and slice stores take the list's mutex and publish with release stores, and
item loads are atomic. The interpreter runs one thread's bytecodes in program order, so the
release/acquire pairs on ``_tail`` and ``_head`` give orderings 1 and 2. Python ints are
immutable and fully built before the pointer to them is published. On the GIL build the GIL
serialises every access, which is stronger still.

What the ring does not do is wake a sleeping consumer: see :mod:`flowcat_ft.waiting`, whose
doorbell a producer rings after publishing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

_EMPTY: list = []


@functools.cache
def _nones(capacity: int) -> tuple[None, ...]:
    """One tuple of Nones per capacity, shared by every ring (to clear popped slots)."""
    return (None,) * capacity


class SpscRing:
    """A bounded FIFO for exactly one producer thread and one consumer thread.

    Producer methods: :meth:`push`, :meth:`push_many`, :meth:`free_slots`.
    Consumer methods: :meth:`pop`, :meth:`pop_many`, :meth:`__len__` (exact for the consumer;
    for any other thread, such as one reading metrics, approximate but never negative).

    Shared state: ``_slots`` (fixed-length list; slot writes by the producer, reads and
    clears by the consumer, each slot handed over by the index protocol in the module
    docstring), ``_tail`` (producer writes, consumer reads), ``_head`` (consumer writes,
    producer reads).
    """

    __slots__ = ("_head", "_mask", "_nones", "_slots", "_tail", "capacity")

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two >= 2, not {capacity}")
        self.capacity = capacity
        self._mask = capacity - 1
        self._slots: list[Any] = [None] * capacity
        self._nones = _nones(capacity)
        self._head = 0
        self._tail = 0

    def __len__(self) -> int:
        # ``_head`` first: read the other way round by a third thread, a tail read before
        # the consumer popped up to it and a head read after could give a negative length.
        head = self._head
        return self._tail - head

    # -- producer side ---------------------------------------------------------------------

    def free_slots(self) -> int:
        """How many items the producer can push now (a lower bound)."""
        return self.capacity - (self._tail - self._head)

    def push(self, item: Any) -> bool:
        """Append ``item``; False (nothing written) if the ring is full."""
        tail = self._tail
        if tail - self._head >= self.capacity:
            return False
        self._slots[tail & self._mask] = item
        self._tail = tail + 1
        return True

    def push_many(self, items: Sequence[Any]) -> int:
        """Append as many of ``items`` as fit, in order; return how many."""
        tail = self._tail
        n = min(len(items), self.capacity - (tail - self._head))
        if n <= 0:
            return 0
        start = tail & self._mask
        first = min(n, self.capacity - start)
        slots = self._slots
        if n == len(items) and first == n:
            slots[start : start + n] = items
        else:
            slots[start : start + first] = items[:first]
            if first < n:
                slots[: n - first] = items[first:n]
        self._tail = tail + n
        return n

    # -- consumer side ---------------------------------------------------------------------

    def pop(self) -> Any:
        """Remove and return the oldest item, or None if the ring is empty."""
        head = self._head
        if head == self._tail:
            return None
        i = head & self._mask
        item = self._slots[i]
        self._slots[i] = None
        self._head = head + 1
        return item

    def pop_many(self, limit: int) -> list[Any]:
        """Remove and return up to ``limit`` of the oldest items (an empty list if none)."""
        head = self._head
        n = min(self._tail - head, limit)
        if n <= 0:
            return _EMPTY
        start = head & self._mask
        first = min(n, self.capacity - start)
        slots = self._slots
        nones = self._nones
        items = slots[start : start + first]
        slots[start : start + first] = nones[:first]
        if first < n:
            items += slots[: n - first]
            slots[: n - first] = nones[: n - first]
        self._head = head + n
        return items
