"""Doorbells: every wait strategy wakes on work from another thread and times out cleanly."""

from __future__ import annotations

import threading
import time

import pytest

from flowcat_ft.waiting import STRATEGIES, Doorbell, default_strategy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_wakes_when_a_producer_publishes(strategy):
    doorbell = Doorbell(strategy)
    box: list[int] = []

    def producer() -> None:
        time.sleep(0.02)
        box.append(1)
        doorbell.ring()

    threading.Thread(target=producer).start()
    assert doorbell.wait(lambda: bool(box), timeout=5)
    assert doorbell.missed_wakeups == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_times_out_without_work(strategy):
    doorbell = Doorbell(strategy)
    start = time.monotonic()
    assert not doorbell.wait(lambda: False, timeout=0.02)
    assert time.monotonic() - start >= 0.02


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown wait strategy"):
        Doorbell("nap")


def test_adaptive_parks_when_work_is_rare():
    doorbell = Doorbell("adaptive", max_spin_us=50)
    for _ in range(5):  # long gaps: the moving average learns that spinning does not pay
        doorbell.wait(lambda: False, timeout=0.005)
    parks = doorbell.parks
    doorbell.wait(lambda: False, timeout=0.005)
    assert doorbell.parks > parks
    assert doorbell._gap_ns > doorbell.max_spin_ns


def test_default_strategy_matches_the_build():
    import sys

    assert default_strategy() == ("block" if sys._is_gil_enabled() else "adaptive")


def test_a_lost_wakeup_is_ended_by_nudges_and_counted():
    """Work published without a ring: the first nudge marks the park, the second ends it."""
    doorbell = Doorbell("block")
    work: list[int] = []
    woke = threading.Event()

    def consume() -> None:
        doorbell.wait(lambda: bool(work))
        woke.set()

    threading.Thread(target=consume, daemon=True).start()
    while not doorbell._parked:
        time.sleep(0.001)
    time.sleep(0.01)  # into the blocking read
    work.append(1)  # and no ring: the wake-up is lost
    doorbell.nudge()
    assert not woke.wait(0.05), "one nudge must not end a park: a producer may be mid-ring"
    doorbell.nudge()
    assert woke.wait(5)
    assert doorbell.missed_wakeups == 1
    assert doorbell.wakeups == 0
