"""The GC policy: frozen and automatic collection off while running, collections driven by
measured garbage and spaced while calls are live, the application's settings restored,
and runtimes in one process sharing one policy."""

from __future__ import annotations

import gc

import pytest
from helpers import wait_until

from flowcat_ft import FrameProcessor, Pipeline, Runtime, TextFrame
from flowcat_ft.gcpolicy import GcPolicy

QUIET = 3600.0  # a housekeeping interval that keeps the housekeeper from ticking


class MakesCycles(FrameProcessor):
    """Leaves reference cycles behind, as some libraries do."""

    def process(self, frame, direction):
        a: dict = {}
        a["self"] = a
        self.push(frame, direction)


def make_cycles(n: int) -> None:
    for _ in range(n):
        a: dict = {}
        a["self"] = a


@pytest.fixture
def app_gc():
    """The application's gc settings before the test, restored after it whatever happens."""
    saved = gc.isenabled(), gc.get_threshold()
    yield
    gc.set_threshold(*saved[1])
    gc.enable() if saved[0] else gc.disable()


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


def test_reading_the_metrics_stops_no_thread(monkeypatch):
    rt = Runtime(threads=1, slabs=16).start()
    try:

        def stops_the_world():  # on 3.13t: every thread stopped while it walks the heap
            raise AssertionError("gc.get_freeze_count() called by a metrics read")

        monkeypatch.setattr(gc, "get_freeze_count", stops_the_world)
        assert rt.metrics()["gc"]["frozen"] > 0  # counted when it froze
    finally:
        monkeypatch.undo()
        rt.stop()


def test_the_applications_own_settings_come_back(app_gc):
    gc.set_threshold(1234, 7, 9)
    gc.disable()
    callbacks = list(gc.callbacks)
    rt = Runtime(threads=1, slabs=16).start()
    rt.stop()
    assert not gc.isenabled()  # the application had turned it off: it stays off
    assert gc.get_threshold() == (1234, 7, 9)
    assert gc.callbacks == callbacks


def test_objects_the_application_froze_stay_frozen(app_gc):
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        rt = Runtime(threads=1, slabs=16).start()
        rt.stop()
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_two_runtimes_share_one_policy():
    first = Runtime(threads=1, slabs=16).start()
    second = Runtime(threads=1, slabs=16).start()
    try:
        assert second.metrics()["gc"]["reasons"] == {}  # the first one collected and froze
        first.stop()
        assert not gc.isenabled()  # the second still runs
        assert gc.get_freeze_count() > 0
    finally:
        first.stop()
        second.stop()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_calls_without_cycles_leave_no_growth_to_collect():
    policy = GcPolicy(threshold=2000, min_interval=0)
    rt = Runtime(threads=1, slabs=16, gc_policy=policy, housekeeping_interval=QUIET).start()
    try:
        call = rt.open_call(Pipeline([FrameProcessor, FrameProcessor]))
        before = policy.garbage
        for i in range(5000):
            call.push(TextFrame(str(i)))
        call.end()
        assert len(list(call.frames(5))) == 5002  # start, 5000 texts, end
        del call
        assert policy.garbage - before < 2000
    finally:
        rt.stop()


def test_a_live_call_making_cycles_gets_a_collection():
    policy = GcPolicy(threshold=1000, min_interval=0)
    rt = Runtime(threads=1, slabs=16, gc_policy=policy, housekeeping_interval=0.01).start()
    try:
        call = rt.open_call(Pipeline([MakesCycles]), lambda f, d: None)
        for _ in range(3000):
            call.push(TextFrame("x"))
        assert wait_until(lambda: policy.reasons.get("garbage", 0) >= 1)
        assert policy.collected >= 1000  # the cycles were found
        assert "idle" not in policy.reasons  # the call is still live
        assert policy.pauses.count == policy.collections
        call.end()
    finally:
        rt.stop()


def test_while_calls_are_live_collections_are_spaced_by_min_interval():
    policy = GcPolicy(threshold=500, min_interval=QUIET)
    rt = Runtime(threads=1, slabs=16, gc_policy=policy, housekeeping_interval=QUIET).start()
    try:
        make_cycles(1000)
        policy.tick(active_calls=3, idle_for=0)  # the start-up collection was just now
        assert policy.reasons == {"start-up": 1}
        policy.min_interval = 0
        policy.tick(active_calls=3, idle_for=0)
        assert policy.reasons == {"start-up": 1, "garbage": 1}
        assert policy.collected >= 1000
        policy.tick(active_calls=3, idle_for=0)  # nothing has built up since
        assert policy.reasons["garbage"] == 1
    finally:
        rt.stop()


def test_idle_collection_waits_for_every_runtime_in_the_process():
    busy_policy, idle_policy = GcPolicy(), GcPolicy(threshold=500, idle_after=1)
    busy = Runtime(threads=1, slabs=16, gc_policy=busy_policy, housekeeping_interval=QUIET)
    idle = Runtime(threads=1, slabs=16, gc_policy=idle_policy, housekeeping_interval=QUIET)
    busy.start(), idle.start()
    try:
        make_cycles(1000)
        busy_policy.tick(active_calls=1, idle_for=0)
        idle_policy.tick(active_calls=0, idle_for=5)
        assert "idle" not in idle_policy.reasons  # the other runtime has a call
        busy_policy.tick(active_calls=0, idle_for=0.5)
        idle_policy.tick(active_calls=0, idle_for=0.5)
        assert "idle" not in idle_policy.reasons  # not idle for long enough yet
        idle_policy.tick(active_calls=0, idle_for=5)
        assert idle_policy.reasons.get("idle") == 1
    finally:
        busy.stop(), idle.stop()


def test_a_collection_by_anyone_counts_as_the_last_one():
    policy = GcPolicy(threshold=500, min_interval=0)
    rt = Runtime(threads=1, slabs=16, gc_policy=policy, housekeeping_interval=QUIET).start()
    try:
        make_cycles(1000)
        assert policy.garbage >= 1000
        pauses = policy.snapshot()["process_pause"]["count"]
        gc.collect()  # a library's own collection
        assert policy.garbage < 500
        assert policy.snapshot()["process_pause"]["count"] == pauses + 1
        policy.tick(active_calls=1, idle_for=0)
        assert "garbage" not in policy.reasons
    finally:
        rt.stop()
