"""Pipelines: order per call, state per call, fusing onto threads, parallel branches, and
system frames overtaking data."""

from __future__ import annotations

import threading

import pytest
from helpers import wait_until
from processors import Counter, Echo, Gate, Hooks, Tag

from flowcat_ft import (
    Direction,
    EndFrame,
    FrameProcessor,
    ParallelPipeline,
    Pipeline,
    Runtime,
    StartFrame,
    SystemFrame,
    TextFrame,
)
from flowcat_ft.pipeline import fuse


def texts(frames) -> list[str]:
    return [f.text for f in frames if isinstance(f, TextFrame)]


def run_call(runtime, pipeline, inputs: list[str]) -> list:
    call = runtime.open_call(pipeline)
    for text in inputs:
        call.push(TextFrame(text))
    call.end()
    return list(call.frames(timeout=10))


def test_frames_keep_their_order_through_seven_processors_on_two_threads(runtime):
    out = run_call(runtime, Pipeline([Tag] * 7, threads=2), [str(i) for i in range(2000)])
    assert isinstance(out[0], StartFrame) and isinstance(out[-1], EndFrame)
    assert texts(out) == [f"{i}+++++++" for i in range(2000)]
    runner = runtime._runners_now()[0]
    assert len(runner.shard.stages) == 2
    assert {s.ident for s in runner.shard.stages} != {threading.get_ident()}


def test_each_call_has_its_own_processor_state(runtime):
    pipeline = Pipeline([Counter, Tag])
    a = runtime.open_call(pipeline)
    b = runtime.open_call(pipeline)
    for i in range(3):
        a.push(TextFrame(f"a{i}"))
        b.push(TextFrame(f"b{i}"))
    a.end()
    b.end()
    assert texts(a.frames(timeout=5)) == ["a0#1+", "a1#2+", "a2#3+"]
    assert texts(b.frames(timeout=5)) == ["b0#1+", "b1#2+", "b2#3+"]


def test_many_calls_from_many_threads_all_complete_in_order(runtime):
    pipeline = Pipeline([Tag] * 7)
    results: dict[int, list[str]] = {}

    def one_call(n: int) -> None:
        results[n] = texts(run_call(runtime, pipeline, [f"{n}:{i}" for i in range(200)]))

    threads = [threading.Thread(target=one_call, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(40))
    for n, got in results.items():
        assert got == [f"{n}:{i}+++++++" for i in range(200)]
    assert runtime.calls == []


@pytest.mark.parametrize(
    ("costs", "threads", "expected"),
    [
        ([1] * 7, 2, [range(0, 4), range(4, 7)]),
        ([1] * 7, 16, [range(i, i + 1) for i in range(7)]),
        ([1, 1, 1, 10], 2, [range(0, 3), range(3, 4)]),
        ([5], 4, [range(0, 1)]),
        ([1] * 7, 1, [range(0, 7)]),
    ],
)
def test_fuse_splits_into_contiguous_balanced_groups(costs, threads, expected):
    assert fuse(costs, threads) == expected


def test_threads_and_shards(runtime):
    """Runtime(threads=2): by default two shards of one thread; threads=2 makes one shard
    of two stages; shards may be set too."""
    for pipeline in (
        Pipeline([Tag] * 5),
        Pipeline([Tag] * 5, threads=2),
        Pipeline([Tag] * 5, shards=3),
    ):
        run_call(runtime, pipeline, ["x"])
    shapes = [[len(r.shard.stages) for r in shards] for shards in runtime._runners.values()]
    assert shapes == [[1, 1], [2], [1, 1, 1]]


def test_calls_spread_over_shards_and_keep_to_theirs(runtime):
    pipeline = Pipeline([Counter, Tag])
    calls = [runtime.open_call(pipeline) for _ in range(4)]
    assert sorted(r.active for r in runtime._runners[pipeline.template]) == [2, 2]
    for call in calls:
        for i in range(50):
            call.push(TextFrame(str(i)))
        call.end()
    for call in calls:  # per-call order and state, whichever shard ran the call
        assert texts(call.frames(timeout=5)) == [f"{i}#{i + 1}+" for i in range(50)]
    assert [r.active for r in runtime._runners[pipeline.template]] == [0, 0]


def test_calls_on_pipelines_made_alike_share_shards(runtime):
    """A pipeline made afresh for each call runs on the same stage threads as the last."""
    before = threading.active_count()
    for i in range(50):
        call = runtime.open_call(Pipeline([Counter, Tag]))
        call.push(TextFrame(str(i)))
        call.end()
        assert texts(call.frames(timeout=5)) == [f"{i}#1+"]
    assert len(runtime._runners_now()) == 2  # Runtime(threads=2): one pipeline's two shards
    assert threading.active_count() <= before + 2


def test_idle_shards_stop_and_a_later_call_starts_new_ones():
    rt = Runtime(threads=2, idle_shard_timeout=0.1, housekeeping_interval=0.01).start()
    try:
        busy, idle = Pipeline([Counter, Tag]), Pipeline([Tag, Counter])
        call = rt.open_call(busy)  # on one of busy's two shards; the other has no call
        busy_shards = rt._runners[busy.template]
        assert texts(run_call(rt, idle, ["a"])) == ["a+#1"]
        idle_stages = [s for runner in rt._runners[idle.template] for s in runner.shard.stages]
        assert wait_until(lambda: idle.template not in rt._runners)
        for stage in idle_stages:
            stage.join(5)
            assert not stage.is_alive()
        # A pipeline's shards stay while any of them has a call.
        assert rt._runners[busy.template] is busy_shards
        call.push(TextFrame("b"))
        call.end()
        assert texts(call.frames(timeout=5)) == ["b#1+"]
        assert texts(run_call(rt, idle, ["c"])) == ["c+#1"]  # on new threads
        assert all(stage.is_alive() for stage in rt._runners[idle.template][0].shard.stages)
    finally:
        rt.stop()


def test_pipeline_wants_factories_not_instances():
    with pytest.raises(TypeError, match="is an instance"):
        Pipeline([Tag()])
    with pytest.raises(ValueError, match="at least one"):
        Pipeline([])


def test_pipelines_made_alike_are_equal():
    def parallel() -> ParallelPipeline:
        return ParallelPipeline([Tag, Counter], [Echo])

    assert Pipeline([Tag, parallel()]) == Pipeline([Tag, parallel()])
    assert hash(Pipeline([Tag, parallel()])) == hash(Pipeline([Tag, parallel()]))
    assert Pipeline([Tag, Pipeline([Counter])]) == Pipeline([Tag, Counter])
    assert Pipeline([Tag, Counter]) != Pipeline([Counter, Tag])
    assert Pipeline([Tag], threads=2) != Pipeline([Tag])
    assert Pipeline([Tag], shards=2) != Pipeline([Tag])
    assert Pipeline([ParallelPipeline([Tag], [Echo])]) != Pipeline([parallel()])


def test_nested_pipelines_are_flattened(runtime):
    out = run_call(runtime, Pipeline([Tag, Pipeline([Tag, Tag])]), ["n"])
    assert texts(out) == ["n+++"]


class Upper(FrameProcessor):
    def process(self, frame, direction):
        if isinstance(frame, TextFrame):
            frame = TextFrame(frame.text.upper())
        self.push(frame, direction)


def test_parallel_pipeline_fans_out_merges_and_passes_lifecycle_once(runtime):
    class BranchHooks(Hooks):
        log = []

    pipeline = Pipeline([ParallelPipeline([Tag, BranchHooks], [Upper, BranchHooks]), Tag])
    out = run_call(runtime, pipeline, ["a", "b"])
    assert texts(out) == ["a++", "A+", "b++", "B+"]
    assert [type(f).__name__ for f in out].count("StartFrame") == 1
    assert [type(f).__name__ for f in out].count("EndFrame") == 1
    assert list(BranchHooks.events().values()) == [["start", "end"], ["start", "end"]]


class Ping(SystemFrame):
    """A system frame of the test's own."""


def test_system_frames_overtake_queued_data(runtime):
    class Blocked(Gate):
        opened = threading.Event()
        entered = threading.Event()

    call = runtime.open_call(Pipeline([Tag, Blocked], threads=2))
    for i in range(20):
        call.push(TextFrame(str(i)))
    call.push(Ping())
    # Open the gate once the first stage has passed everything on (start, 20 texts, ping).
    first = runtime._runners_now()[0].shard.stages[0]
    assert wait_until(lambda: first.metrics.frames >= 22)
    Blocked.opened.set()
    call.end()
    kinds = [f.text if isinstance(f, TextFrame) else type(f).__name__ for f in call.frames(5)]
    # At most frame 0 was inside the gate; the ping overtakes the frames queued behind it.
    assert kinds.index("Ping") < kinds.index("5+")
    assert [k for k in kinds if k.endswith("+")] == [f"{i}+" for i in range(20)]


def test_a_stage_counts_the_system_frames_it_meets_between_data_frames(runtime):
    at_a, pinged, started = threading.Event(), threading.Event(), threading.Event()

    class Hold(FrameProcessor):
        def process(self, frame, direction):
            if isinstance(frame, StartFrame):
                started.wait(5)  # until "a" and "b" wait behind, to be taken in one pass
            elif isinstance(frame, TextFrame) and frame.text == "a":
                at_a.set()
                pinged.wait(5)  # until the ping waits, to be met before "b"
            self.push(frame, direction)

    call = runtime.open_call(Pipeline([Hold]))
    call.push(TextFrame("a"))
    call.push(TextFrame("b"))
    started.set()
    assert at_a.wait(5)
    call.push(Ping())
    pinged.set()
    stage = runtime._runners_now()[0].shard.stages[0]
    # start, a, ping, b: the ping handled mid-sweep counts like the others.
    assert wait_until(lambda: stage.metrics.frames >= 4)
    call.end()
    kinds = [f.text if isinstance(f, TextFrame) else type(f).__name__ for f in call.frames(5)]
    assert kinds[1:4] == ["a", "Ping", "b"]


def test_frames_pushed_upstream_leave_at_the_input_end(runtime):
    seen: list[tuple[str, Direction]] = []
    done = threading.Event()

    def on_output(frame, direction):
        if isinstance(frame, TextFrame):
            seen.append((frame.text, direction))
        if isinstance(frame, EndFrame):
            done.set()

    call = runtime.open_call(Pipeline([Tag, Tag, Echo, Tag], threads=2), on_output)
    call.push(TextFrame("hi"))
    # The reply travels back on its own; output still on its way once the call has
    # ended is dropped (the call lets go of its parts), so wait for it before ending.
    assert wait_until(lambda: ("re:hi++", Direction.UPSTREAM) in seen)
    call.end()
    assert done.wait(5)
    assert ("hi+++", Direction.DOWNSTREAM) in seen


class Heavy(FrameProcessor):
    cost = 10.0


def test_fusing_sees_the_cost_of_what_a_lambda_makes(runtime):
    run_call(runtime, Pipeline([Tag, Tag, Tag, lambda: Heavy()], threads=2), ["x"])
    runner = runtime._runners_now()[0]
    assert [s.positions for s in runner.shard.stages] == [range(0, 3), range(3, 4)]
