"""The free-threading promise: importing every module and running a pipeline across
threads leaves the GIL off on 3.13t."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest
from helpers import FREE_THREADED
from processors import Tag

import flowcat_ft
from flowcat_ft import Pipeline, Runtime, TextFrame

# flowcat_ft.profiling imports pyinstrument, which turns the GIL on, only when a profiler
# is made, and the WebRTC companion's modules import aiortc (not installable on 3.13t) only
# when the companion runs, so importing every module is safe.


@pytest.mark.skipif(not FREE_THREADED, reason="the GIL build has no GIL to keep off")
def test_gil_stays_off_after_importing_everything_and_running_a_pipeline():
    modules = [m.name for m in pkgutil.walk_packages(flowcat_ft.__path__, "flowcat_ft.")]
    for name in modules:
        importlib.import_module(name)
    assert len(modules) > 10
    with Runtime(threads=2) as rt:
        pipeline = Pipeline([Tag] * 7)
        calls = [rt.open_call(pipeline) for _ in range(2)]  # one on each shard's thread
        for call in calls:
            for i in range(500):
                call.push(TextFrame(str(i)))
            call.push_audio(b"\x00\x00" * 160, 8000)
            call.end()
        for call in calls:
            assert len(list(call.frames(timeout=10))) == 503
        threads = {stage.ident for runner in rt._runners_now() for stage in runner.shard.stages}
        assert len(threads) == 2
    assert sys._is_gil_enabled() is False
