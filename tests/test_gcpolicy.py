"""The GC policy: frozen and automatic collection off while running, collections only
when the runtime decides, counted, and the interpreter's settings restored on stop."""

from __future__ import annotations

import gc

from helpers import wait_until

from flowcat_ft import FrameProcessor, Pipeline, Runtime, TextFrame
from flowcat_ft.gcpolicy import GcPolicy


class MakesCycles(FrameProcessor):
    """Leaves reference cycles behind, as some libraries do."""

    def process(self, frame, direction):
        a: dict = {}
        a["self"] = a
        self.push(frame, direction)


def test_start_freezes_and_disables_automatic_collection_and_stop_restores():
    assert gc.isenabled()
    rt = Runtime(threads=1, slabs=16).start()
    try:
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert rt.metrics()["gc"]["reasons"] == {"start-up": 1}
    finally:
        rt.stop()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_collects_when_idle_after_calls_ended():
    policy = GcPolicy(idle_after=0.05)
    rt = Runtime(threads=1, slabs=16, gc_policy=policy, housekeeping_interval=0.01).start()
    try:
        call = rt.open_call(Pipeline([MakesCycles]), lambda f, d: None)
        for _ in range(100):
            call.push(TextFrame("x"))
        call.end()
        assert call.wait(5)
        assert wait_until(lambda: policy.reasons.get("idle", 0) >= 1)
        assert policy.collected >= 100  # the cycles were found by the runtime's collection
        assert policy.pauses.count == policy.collections
        collections = policy.collections
        threading_pause = 0.1
        assert not wait_until(lambda: policy.collections > collections, threading_pause)
    finally:
        rt.stop()


def test_collects_on_its_interval_while_calls_keep_running():
    policy = GcPolicy(idle_after=60, max_interval=0.05)
    rt = Runtime(threads=1, slabs=16, gc_policy=policy, housekeeping_interval=0.01).start()
    try:
        pipeline = Pipeline([MakesCycles])
        keep = rt.open_call(pipeline, lambda f, d: None)
        other = rt.open_call(pipeline, lambda f, d: None)
        other.push(TextFrame("x"))
        other.end()
        assert other.wait(5)
        assert wait_until(lambda: policy.reasons.get("interval", 0) >= 1)
        assert "idle" not in policy.reasons
        keep.end()
    finally:
        rt.stop()
