"""A hiccup meter: how late the machine wakes a process that does nothing but sleep.

Run as its own process (``python -m bench.soak.hiccups``) beside the server under test, it
sleeps 1 ms at a time and keeps the longest oversleep; each line read on stdin is answered
with a JSON line holding the longest oversleep (ms) and the wake-ups since the last one.
A stall the server's round trips show at the same time as a hiccup here is the machine's
(the hypervisor, the kernel, another process), not the server's: this process has no
work, no locks and no garbage to collect.
"""

from __future__ import annotations

import json
import sys
import threading
import time

PERIOD = 0.001


class Meter:
    """The longest oversleep since :meth:`take` was last called, a sleep still going on
    included (a report may be asked for, and answered, before the sleeper wakes).

    Threading contract: the sleeping thread writes ``_worst``, ``_wakeups`` and
    ``_asleep_since``; the reporting thread reads and resets them; both under ``_lock``,
    which the sleeper takes twice per wake-up (uncontended but for a report)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worst = 0.0
        self._wakeups = 0
        self._asleep_since = time.monotonic()

    def run(self) -> None:
        while True:
            with self._lock:
                self._asleep_since = time.monotonic()
            time.sleep(PERIOD)
            with self._lock:
                self._wakeups += 1
                self._worst = max(self._worst, self._late(time.monotonic()))

    def take(self) -> dict[str, float]:
        with self._lock:
            now = time.monotonic()
            worst, wakeups = max(self._worst, self._late(now)), self._wakeups
            self._worst, self._wakeups = 0.0, 0
            # A sleep still going on counts here, and from now on in the next report.
            self._asleep_since = max(self._asleep_since, now - PERIOD)
        return {"max_ms": round(worst * 1000, 3), "wakeups": wakeups}

    def _late(self, now: float) -> float:
        return now - self._asleep_since - PERIOD


def main() -> None:
    meter = Meter()
    threading.Thread(target=meter.run, name="hiccups", daemon=True).start()
    for _ in sys.stdin:
        print(json.dumps(meter.take()), flush=True)


if __name__ == "__main__":
    main()
