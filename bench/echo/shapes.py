"""Shapes: flowcat-ft's echo server in several shapes (event-loop threads, stage threads,
wait strategy) beside the floor, with the echo kit's load generator and /proc readings.

    python -m bench.echo.shapes --shapes "floor:2;ft:2,1,block;ft:1,1,block;gil:1,1" \\
        --points 200,300,400

Each shape is ``floor:LOOPS`` or ``BUILD:LOOPS,THREADS[,WAIT]`` (BUILD ``ft`` or ``gil``).
Every shape runs the points in turn until its p99 passes 100 ms; each line gives p99,
the server's CPU µs per echoed frame, context switches per frame, the CPU everyone else
used, and the CPU per frame of each server thread. The last line is the JSON result.
"""

from __future__ import annotations

import argparse

from bench._common import finish, header, parser, python_of
from bench.echo import servers
from bench.echo.__main__ import measure, start
from bench.echo.loadgen import Load
from bench.echo.servers import Server


def server_for(shape: str) -> Server:
    kind, _, spec = shape.partition(":")
    if kind == "floor":
        return servers.floor(int(spec))
    loops, threads, *wait = spec.split(",")
    args = ("--loops", loops, "--threads", threads) + (("--wait", wait[0]) if wait else ())
    return Server(shape, python_of(kind), "bench.echo.flowcat_server", args, shape)


def main(args: argparse.Namespace) -> None:
    header("echo.shapes", args)
    points = [int(p) for p in args.points.split(",")]
    seconds = 3.0 if args.quick else args.seconds
    runs = []
    for shape in args.shapes.split(";"):
        with start({shape: server_for(shape)})[shape] as running:
            for calls in points:
                servers.wait_quiet(running)
                run = measure(running, Load(calls, "raw", seconds, 2.0))
                p99 = run["rtt_ms"]["p99"]
                threads = " ".join(
                    f"{t['name']}={t['cpu_us_per_frame']}" for t in run["threads"] if t["cores"]
                )
                print(
                    f"{shape:18s} {calls:4d} calls  p99 {p99 or float('nan'):8.2f} ms  "
                    f"cpu {run['cpu_us_per_frame']:6.1f} us/frame  "
                    f"switches {run['voluntary_switches_per_frame']:.2f} vol "
                    f"{run['nonvoluntary_switches_per_frame']:.2f} invol  "
                    f"others {run['other_cpu_cores']:.2f} cores  threads {threads}",
                    flush=True,
                )
                runs.append({"shape": shape, **run})
                if p99 is None or p99 > 100:
                    break
    finish({"bench": "echo.shapes", "points": points, "seconds": seconds, "runs": runs}, args)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--shapes", required=True, help="';'-separated shapes (see above)")
    p.add_argument("--points", default="200,300,400", help="call counts (200,300,400)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    main(p.parse_args())
