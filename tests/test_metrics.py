"""Metrics are readable while calls run: stage rates, queue depth, histograms, counters."""

from __future__ import annotations

import json
import threading

from helpers import wait_until
from processors import Gate, Tag

from flowcat_ft import Pipeline, Runtime, TextFrame
from flowcat_ft.metrics import Histogram


def test_histogram_percentiles_bound_the_values():
    h = Histogram()
    for ns in [1000] * 98 + [50_000, 1_000_000]:
        h.add(ns)
    assert 1000 <= h.percentile(50) < 2048
    assert 50_000 <= h.percentile(99) <= 65_536
    assert h.max == 1_000_000 and h.count == 100
    assert Histogram().percentile(99) == 0


def test_metrics_while_running_and_after():
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    rt = Runtime(threads=2, housekeeping_interval=0.05).start()
    try:
        call = rt.open_call(Pipeline([Tag, Blocked], threads=2), lambda f, d: None)
        for i in range(200):
            call.push(TextFrame(str(i)))
        assert Blocked.entered.wait(5)
        snapshot = rt.metrics()
        json.dumps(snapshot)  # plain data, ready for an endpoint
        stage0, stage1 = snapshot["pipelines"][0]["stages"]
        assert stage0["frames"] > 0 and stage0["frame_time"]["count"] > 0
        assert stage1["queue_depth"] > 0
        assert snapshot["calls"]["active"] == 1
        assert snapshot["calls"]["per_call"][0]["frames_in"] == 200
        Blocked.opened.set()

        def rate() -> float:
            call.push(TextFrame("more"))  # keep frames flowing while the rate is sampled
            return rt.metrics()["pipelines"][0]["stages"][1]["frames_per_s"]

        assert wait_until(lambda: rate() > 0)
        call.end()
        assert call.wait(5)
        after = rt.metrics()
        assert after["calls"] == {"active": 0, "ended": 1, "per_call": []}
        assert after["pipelines"][0]["stages"][1]["frames"] >= call.frames_in + 2
        assert after["gc"]["automatic"] is False
    finally:
        rt.stop()


def test_queue_depth_read_while_calls_are_scheduled_and_taken():
    """Metrics read from another thread while the first stage pops ready calls and other
    threads schedule them: approximate, never an error (the ready deque cannot be
    iterated while it changes on 3.13t)."""
    rt = Runtime(threads=1, housekeeping_interval=0.05).start()
    stop = threading.Event()
    try:
        calls = [rt.open_call(Pipeline([Tag]), lambda f, d: None) for _ in range(20)]

        def feed() -> None:
            while not stop.is_set():
                for call in calls:
                    call.try_push(TextFrame("x"))

        feeders = [threading.Thread(target=feed) for _ in range(2)]
        for t in feeders:
            t.start()
        depths = [rt.metrics()["pipelines"][0]["stages"][0]["queue_depth"] for _ in range(3000)]
        assert max(depths) > 0
    finally:
        stop.set()
        for t in feeders:
            t.join()
        rt.stop()
