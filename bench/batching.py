"""Batching: what a frame of the echo benchmark's pipeline costs its stage thread, by how
many calls' frames a stage wake-up finds.

The echo benchmark's 7-processor pipeline (µ-law decode, 4 pass-through, echo, µ-law
encode) runs on one stage thread. Calls get one 160-byte µ-law frame each per round,
``batch`` calls at a time, handed over together through an
:class:`~flowcat_ft.call.Inbox`; the next round starts once the round has come out. The
stage thread's CPU clock over the rounds, per frame, is the figure: at a batch of 1 it is
mostly the cost of one wake-up (park, wake, pass overhead); as batches grow, the kernels
spread it. Least of 3 runs; ``--wait`` picks the stage's wait strategy.
"""

from __future__ import annotations

import argparse

from bench._common import finish, header, parser, table
from bench._rounds import stage_cpu_per_frame
from bench.echo.flowcat_server import bench_pipeline
from flowcat_ft import InputAudioRawFrame, OutputAudioRawFrame, Runtime
from flowcat_ft.waiting import STRATEGIES

BATCHES = (1, 10, 50, 200)
PAYLOAD = bytes(range(160))


def cpu_per_frame(batch: int, rounds: int, wait: str | None) -> float:
    """Stage CPU µs per frame at ``batch`` calls a round."""
    pipeline = bench_pipeline()
    pipeline.shards = 1
    with Runtime(threads=1, slabs=8192, wait_strategy=wait) as runtime:

        def audio() -> InputAudioRawFrame:
            return InputAudioRawFrame.from_bytes(runtime.pool, PAYLOAD, 8000, 1, "mulaw")

        return stage_cpu_per_frame(runtime, pipeline, batch, OutputAudioRawFrame, audio, rounds)


def main(args: argparse.Namespace) -> None:
    header("batching", args)
    frames = args.frames or (10_000 if args.quick else 40_000)
    print(f"echo pipeline, 7 processors, one stage thread; {frames:,} frames per run\n")
    us: dict[str, float] = {}
    for batch in BATCHES:
        us[str(batch)] = round(cpu_per_frame(batch, max(10, frames // batch), args.wait), 2)
    print(table(("frames per wake-up", "stage CPU us/frame"), list(us.items())))
    finish({"bench": "batching", "frames": frames, "wait": args.wait, "us_per_frame": us}, args)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--frames", type=int, help="frames per run (default 40,000; quick 10,000)")
    p.add_argument("--wait", choices=STRATEGIES, help="the stage's wait strategy")
    main(p.parse_args())
