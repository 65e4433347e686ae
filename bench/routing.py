"""Routing cost: CPU microseconds per frame per processor hop, read from the stage
thread's own CPU clock.

A runtime runs a pipeline on one stage thread (one shard, so every call is on it). Calls
get small text frames in *rounds*: one frame for each of ``batch`` calls, pushed through
an :class:`~flowcat_ft.call.Inbox` and handed to the stage together, so the stage finds
``batch`` frames at once (a batch of 1 is one call's frame at a time); the next round
starts once the round has come out. The stage thread's CPU time over the rounds, divided
by the frames, is what a frame costs it; the same with 1 processor and with
``--processors`` processors gives the cost of one hop::

    us_per_hop = (cpu(N processors) - cpu(1 processor)) / (frames * (N - 1))

Two kinds of hop: **plain**, a processor that overrides ``process()`` (called once per
frame), and **batch**, the base class's ``process_batch`` kernel (called once per batch).
Targets (3.13t): a batch hop at most 0.3 µs per frame in batches of 200; a plain hop no
more than before the batch path (0.6-0.9 µs, measured as wall time per hop).
"""

from __future__ import annotations

import argparse

from bench._common import finish, header, parser, table
from bench._rounds import stage_cpu_per_frame
from flowcat_ft import Direction, Frame, FrameProcessor, Pipeline, Runtime, TextFrame

BATCH_TARGET_US = 0.3
KINDS = ("plain", "batch")
BATCHES = (1, 200)


class Plain(FrameProcessor):
    """A pass-through called once per frame (it overrides ``process``)."""

    def process(self, frame: Frame, direction: Direction) -> None:
        self.push(frame, direction)


class Batched(FrameProcessor):
    """A pass-through called once per batch (the base class's ``process_batch``)."""


def cpu_per_frame(kind: str, processors: int, batch: int, rounds: int) -> float:
    """Stage CPU µs per frame through ``processors`` hops of ``kind``, ``batch`` calls a
    round."""
    cls = Plain if kind == "plain" else Batched
    pipeline = Pipeline([cls] * processors, shards=1)
    with Runtime(threads=1) as runtime:
        return stage_cpu_per_frame(
            runtime, pipeline, batch, TextFrame, lambda: TextFrame("x"), rounds
        )


def main(args: argparse.Namespace) -> None:
    header("routing", args)
    n = args.processors
    frames = args.frames or (40_000 if args.quick else 200_000)
    print(
        f"stage CPU per frame, 1 and {n} pass-through processors on one stage thread; "
        f"{frames:,} frames per run, least of 3 runs\n"
    )
    rows = []
    us_per_hop: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        for batch in BATCHES:
            rounds = max(1, frames // batch)
            one = cpu_per_frame(kind, 1, batch, rounds)
            many = cpu_per_frame(kind, n, batch, rounds)
            hop = max(0.0, (many - one) / (n - 1))
            us_per_hop.setdefault(kind, {})[str(batch)] = round(hop, 3)
            rows.append((kind, batch, round(one, 2), round(many, 2), round(hop, 3)))
    print(table(("hop", "batch", "us/frame, 1 proc", f"us/frame, {n} procs", "us/hop"), rows))
    batch_hop = us_per_hop["batch"]["200"]
    verdict = "meets" if batch_hop <= BATCH_TARGET_US else "misses"
    print(
        f"\nbatch hop in batches of 200: {batch_hop:.3f} us: {verdict} the target of "
        f"<= {BATCH_TARGET_US} us; plain hop: {us_per_hop['plain']['200']:.3f} us "
        f"(batches of 200), {us_per_hop['plain']['1']:.3f} us (one frame at a time)"
    )
    finish(
        {
            "bench": "routing",
            "processors": n,
            "frames": frames,
            "us_per_hop": us_per_hop,
            "target_batch_us_per_hop": BATCH_TARGET_US,
        },
        args,
    )


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--frames", type=int, help="frames per run (default 200,000; quick 40,000)")
    p.add_argument("--processors", type=int, default=7, help="processors in the long pipeline")
    main(p.parse_args())
