"""Counters and histograms that stage threads write and anyone may read while running.

Every metric has one writer thread; readers see values that may be a moment old, which is
what a monitoring read needs and costs the hot path nothing.
"""

from __future__ import annotations


class Histogram:
    """Durations in nanoseconds in power-of-two buckets (bucket ``b`` holds ``[2**(b-1), 2**b)``).

    Single writer (:meth:`add`); readers use :meth:`percentile` and :meth:`snapshot`.
    """

    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets = [0] * 64
        self.count = 0
        self.total = 0
        self.max = 0

    def add(self, ns: int) -> None:
        if ns < 0:
            ns = 0
        self.buckets[ns.bit_length()] += 1
        self.count += 1
        self.total += ns
        if ns > self.max:
            self.max = ns

    def percentile(self, p: float) -> int:
        """Upper bound (ns) of the bucket holding the ``p``-th percentile, 0 if empty."""
        count = self.count
        if not count:
            return 0
        rank = p / 100.0 * count
        seen = 0
        for b, n in enumerate(list(self.buckets)):
            seen += n
            if seen >= rank and n:
                return min(1 << b, self.max) if b else 0
        return self.max

    def snapshot(self) -> dict[str, float]:
        count = self.count
        return {
            "count": count,
            "mean_us": (self.total / count / 1000) if count else 0.0,
            "p50_us": self.percentile(50) / 1000,
            "p99_us": self.percentile(99) / 1000,
            "max_us": self.max / 1000,
        }


class StageMetrics:
    """What one stage thread did. Written only by that thread."""

    __slots__ = ("batches", "dropped_stale", "frame_ns", "frames", "rate")

    def __init__(self) -> None:
        self.frames = 0
        self.batches = 0
        self.dropped_stale = 0
        self.frame_ns = Histogram()
        self.rate = 0.0  # frames/s over the last sampling period, written by the housekeeper
