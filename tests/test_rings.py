"""The SPSC ring: FIFO semantics, batches that wrap, and a cross-thread stress test."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from helpers import FREE_THREADED

from flowcat_ft.rings import SpscRing
from flowcat_ft.waiting import Doorbell


def test_fifo_until_full_then_refuses():
    ring = SpscRing(4)
    assert [ring.push(i) for i in range(5)] == [True, True, True, True, False]
    assert len(ring) == 4 and ring.free_slots() == 0
    assert [ring.pop() for _ in range(5)] == [0, 1, 2, 3, None]


def test_batches_wrap_around_the_end():
    ring = SpscRing(8)
    assert ring.push_many(list(range(6))) == 6
    assert ring.pop_many(5) == [0, 1, 2, 3, 4]
    assert ring.push_many(list(range(6, 20))) == 7  # only 7 free slots
    assert ring.pop_many(100) == list(range(5, 13))
    assert ring.pop_many(100) == []


def test_popped_slots_are_cleared():
    ring = SpscRing(4)
    ring.push_many([object(), object()])
    ring.pop_many(2)
    assert ring._slots == [None] * 4  # nothing kept alive (slabs would leak otherwise)


@pytest.mark.parametrize("capacity", [0, 1, 3, 100])
def test_capacity_must_be_power_of_two(capacity):
    with pytest.raises(ValueError, match="power of two"):
        SpscRing(capacity)


@pytest.mark.parametrize("strategy", ["adaptive", "block", "yield"])
def test_stress_no_item_lost_duplicated_or_reordered(strategy):
    """Millions of items (on 3.13t) through a small ring, random batch sizes both sides."""
    total = 2_000_000 if FREE_THREADED else 200_000
    ring = SpscRing(256)
    doorbell = Doorbell(strategy)
    errors: list[str] = []
    finished = threading.Event()

    def nudge() -> None:  # as the runtime's housekeeper does: a lost wake-up is counted
        while not finished.wait(0.1):
            doorbell.nudge()

    def produce() -> None:
        rng = random.Random(1)
        sent = 0
        while sent < total:
            n = min(rng.randint(1, 64), total - sent)
            batch = list(range(sent, sent + n))
            done = 0
            while done < n:
                pushed = ring.push_many(batch[done:]) if n > 1 else int(ring.push(batch[0]))
                done += pushed
                doorbell.ring()
                if not pushed:
                    os.sched_yield()
            sent += n

    def consume() -> None:
        rng = random.Random(2)
        expected = 0
        while expected < total:
            if not len(ring):
                doorbell.wait(lambda: len(ring) > 0)
            items = ring.pop_many(rng.randint(1, 300))
            if items and (items[0] != expected or items[-1] != expected + len(items) - 1):
                errors.append(f"expected {expected}, got {items[:3]}...")
                return
            if items != list(range(expected, expected + len(items))):
                errors.append(f"gap or duplicate after {expected}")
                return
            expected += len(items)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    nudger = threading.Thread(target=nudge)
    for t in [*threads, nudger]:
        t.start()
    for t in threads:
        t.join(120)
    finished.set()
    nudger.join()
    assert not any(t.is_alive() for t in threads), "stress test hung"
    assert errors == []
    assert len(ring) == 0
    assert doorbell.missed_wakeups == 0


def test_a_third_thread_never_reads_a_negative_length():
    """Metrics read a ring's length from a thread that neither pushes nor pops."""
    ring = SpscRing(8)
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            ring.push(1)

    def consume() -> None:
        while not stop.is_set():
            ring.pop()

    workers = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for worker in workers:
        worker.start()
    reads, lowest, highest = 0, 0, 0
    try:  # 200,000 reads, and on until one has seen items in the ring
        deadline = time.monotonic() + 10
        while reads < 200_000 or (highest == 0 and time.monotonic() < deadline):
            lengths = [len(ring) for _ in range(1000)]
            reads += len(lengths)
            lowest, highest = min(lowest, *lengths), max(highest, *lengths)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert lowest == 0 and highest > 0
