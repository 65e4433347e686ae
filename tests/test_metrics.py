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
