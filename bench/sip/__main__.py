"""SIP benchmark: call set-ups per second, and concurrent RTP calls held without loss.

The server is the echo benchmark's flowcat-ft server on 3.13t (``bench/echo/
flowcat_server.py --sip paced``: SIP over UDP, RTP as a phone call gets it, with the
jitter buffer and one packet every 20 ms, the 7-processor echo pipeline), started once.

1. **Set-up rate.** SIPp (``bench/sip/setup.xml``) places calls at each rate of the ladder
   for ``--seconds`` s: INVITE, 200 OK, ACK, the call held ``--hold`` s, BYE. A rate holds
   when every call was set up and hung up (SIPp counted no failure: no 4xx/5xx, no
   retransmission given up, no message missing for 5 s) and the set-ups completed at
   ≥ 95% of the rate asked; the ladder stops after the first rate that does not.
2. **Calls held.** The echo kit's load generator (``--rtp``: it places the SIP calls
   itself) holds N calls, each sending PCMU RTP at 50 packets/s for ``--seconds`` s; a
   point holds when every call was set up and every packet of the window came back (the
   echo's round trip is reported too). The ladder stops after the first point that loses.
   Each point starts once the server is quiet (*quiet after*: the seconds that took), so
   calls a failed rate left behind are not measured with it.

Each run records the server's CPU per call set up (or per echoed packet). Writes
``bench/results/DATE-Nc-sip[-quick].{json,md}`` (with ``--loops``/``--threads``, the
server's shape in the name: ``-2loops-1threads``). ``--quick``: rates 10 and 50, 50 and 100
calls, 3 s each.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench._common import ROOT, cores, finish, header, parser, table
from bench.echo import loadgen, servers
from bench.echo.loadgen import Load
from bench.echo.servers import Running
from bench.sip import sipp
from bench.sip.sipp import Rate

RATES = (10, 20, 50, 100, 150, 200, 300, 400, 500, 700, 1000)
QUICK_RATES = (10, 50)
CALLS = (100, 200, 300, 400, 500, 600, 800, 1000, 1200)
QUICK_CALLS = (50, 100)
MIN_COMPLETED = 0.95
"""A rate holds only if set-ups completed at this share of it or more."""
RESULTS = ROOT / "bench" / "results"
DRAIN_LIMIT = 80.0
"""Seconds a point of calls held waits for the server to go quiet first. A rate that
failed leaves calls SIPp gave up on, which the server keeps until its 200 OK goes 32 s
unacknowledged or their RTP is silent for 30 s; measured beside them, a point would be
judged on their load too."""
LOGS = RESULTS / "tmp"
SETUP_TARGET = 50
HELD_TARGET = 300


@dataclass(frozen=True)
class Plan:
    rates: list[int]
    calls: list[int]
    seconds: float
    hold: float
    quick: bool


def rate_held(run: dict[str, Any]) -> bool:
    """Every call set up and hung up, at ≥ :data:`MIN_COMPLETED` of the rate asked."""
    completed = run["completed_rate"]
    return (
        run["sipp_exit"] == 0
        and run["failed"] == 0
        and run["successful"] == run["calls"]
        and completed is not None
        and completed >= MIN_COMPLETED * run["rate"]
    )


def calls_held(run: dict[str, Any]) -> bool:
    """Every call set up and kept, every packet of the window back."""
    return (
        run["failed"] == 0
        and run["closed"] == 0
        and run["expected"] > 0
        and run["received"] == run["expected"]
    )


def ladder(
    points: Sequence[int],
    measure: Callable[[int], dict[str, Any]],
    holds: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """``measure`` each point in turn, up to and including the first that does not hold."""
    runs = []
    for point in points:
        run = measure(point)
        runs.append({**run, "held": holds(run)})
        if not runs[-1]["held"]:
            break
    return runs


def best(runs: Sequence[dict[str, Any]], key: str) -> int:
    """The largest ``key`` of the runs that held before the first that did not (0: none)."""
    held = 0
    for run in runs:
        if not run["held"]:
            break
        held = run[key]
    return held


def measure_rate(running: Running, plan: Plan, rate: int) -> dict[str, Any]:
    servers.wait_quiet(running)
    cpu = running.cpu_seconds()
    run = sipp.run(running.port, Rate(rate, plan.seconds, plan.hold))
    used = running.cpu_seconds() - cpu
    run["server_cpu_ms_per_call"] = (
        round(used * 1e3 / run["successful"], 2) if run["successful"] else None
    )
    setup = run["setup_ms"]
    print(
        f"  {rate:>5} calls/s  {run['successful']}/{run['calls']} ok, {run['failed']} failed  "
        f"completed {run['completed_rate'] or 0:.1f}/s  set-up p99 {setup['p99']} ms",
        flush=True,
    )
    return run


def measure_calls(running: Running, plan: Plan, calls: int) -> dict[str, Any]:
    drained = servers.wait_quiet(running, limit=DRAIN_LIMIT)
    marks: dict[str, float] = {}

    def on_progress(line: str) -> None:
        if line in ("measure", "measured"):
            marks[line] = running.cpu_seconds()
            marks[line + "_at"] = time.monotonic()

    load = Load(calls, "rtp", plan.seconds, warmup=1.0 if plan.quick else 2.0)
    run = loadgen.run(running.port, load, on_progress)
    cpu = marks["measured"] - marks["measure"]
    seconds = marks["measured_at"] - marks["measure_at"]
    run["server_cpu_cores"] = round(cpu / seconds, 3)
    received = run["received"]
    run["server_cpu_us_per_packet"] = round(cpu * 1e6 / received, 1) if received else None
    run["drained_s"] = drained
    print(
        f"  {calls:>5} calls  {run['opened']} set up, {run['closed']} closed  "
        f"{received}/{run['expected']} packets back  p99 {run['rtt_ms']['p99']} ms",
        flush=True,
    )
    return run


def targets(result: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issue 16's set-up rate target, and how many calls with RTP were held."""
    rate, rates = result["setup_rate"], [r["rate"] for r in result["rates"]]
    out: list[tuple[str, str, bool | None]] = []
    shown = f"{rate} calls/s held (largest rate run: {max(rates, default=0)})"
    out.append(
        (
            f"≥ {SETUP_TARGET} call set-ups per second",
            shown,
            _verdict(rate, result["rates"], SETUP_TARGET),
        )
    )
    held, points = result["calls_held"], [r["calls"] for r in result["held"]]
    shown = f"{held} calls held (largest point run: {max(points, default=0)})"
    out.append(
        (
            f"≥ {HELD_TARGET} concurrent RTP calls without loss",
            shown,
            _verdict(held, result["held"], HELD_TARGET),
        )
    )
    return out


def _verdict(value: int, runs: Sequence[dict[str, Any]], target: int) -> bool | None:
    """Met; missed (a ladder that stopped short of the target); None where every point run
    held but none reached the target."""
    if value >= target:
        return True
    return False if runs and not runs[-1]["held"] else None


RATE_HEADERS = ("calls/s", "calls", "ok", "failed", "completed/s", "set-up p50 ms",
                "p99 ms", "max ms", "server CPU ms/call", "held")  # fmt: skip
HELD_HEADERS = ("calls", "quiet after s", "set up", "closed", "packets back", "p50 ms",
                "p99 ms", "max ms", "set-up p99 ms", "server cores", "CPU µs/packet",
                "held")  # fmt: skip


def rate_rows(runs: Sequence[dict[str, Any]]) -> list[tuple[object, ...]]:
    return [
        (r["rate"], r["calls"], r["successful"], _failed(r), r["completed_rate"],
         r["setup_ms"]["p50"], r["setup_ms"]["p99"], r["setup_ms"]["max"],
         r["server_cpu_ms_per_call"], "yes" if r["held"] else "no")
        for r in runs
    ]  # fmt: skip


def _failed(run: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in run["failures"].items())
    return f"{run['failed']} ({kinds})" if kinds else str(run["failed"])


def held_rows(runs: Sequence[dict[str, Any]]) -> list[tuple[object, ...]]:
    return [
        (r["calls"], "busy" if r["drained_s"] is None else r["drained_s"], r["opened"],
         r["closed"], f"{r['received']}/{r['expected']}",
         r["rtt_ms"]["p50"], r["rtt_ms"]["p99"], r["rtt_ms"]["max"], r["setup_ms"]["p99"],
         r["server_cpu_cores"], r["server_cpu_us_per_packet"], "yes" if r["held"] else "no")
        for r in runs
    ]  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    def md(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return lines + [
            "| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows
        ]

    verdicts = {True: "met", False: "MISSED", None: "n/a"}
    return "\n".join([
        f"# SIP benchmark, {result['date']}, {result['machine_cores']} cores"
        + (" (quick)" if result["quick"] else ""),
        "",
        f"`{result['command']}`",
        "",
        f"Server: {result['server']}. SIPp {result['sipp']} as the caller for set-ups; "
        "the echo kit's load generator (`--rtp`) for calls held.",
        "",
        f"## Call set-ups (each call held {result['hold']:g} s, {result['seconds']:g} s per rate)",
        "",
        *md(RATE_HEADERS, rate_rows(result["rates"])),
        "",
        f"## Concurrent calls with RTP, 50 packets/s each ({result['seconds']:g} s per point)",
        "",
        "Each point starts once the server has used under 5% of a core for 1 s (*quiet "
        f"after*, {DRAIN_LIMIT:g} s at most: *busy*).",
        "",
        *md(HELD_HEADERS, held_rows(result["held"])),
        "",
        "## Targets",
        "",
        *(f"- **{verdicts[met]}** {target}: {shown}" for target, shown, met in targets(result)),
        "",
    ])  # fmt: skip


def main(args: Any) -> None:
    header("sip", args)
    loadgen.build()
    plan = Plan(
        rates=[int(r) for r in args.rates.split(",")]
        if args.rates
        else list(QUICK_RATES if args.quick else RATES),
        calls=[int(c) for c in args.calls.split(",")]
        if args.calls
        else list(QUICK_CALLS if args.quick else CALLS),
        seconds=args.seconds or (3.0 if args.quick else 10.0),
        hold=args.hold,
        quick=args.quick,
    )
    server = servers.flowcat("ft", args.loops, args.threads, sip="paced")
    with Running(server, LOGS / "sip-server.log") as running:
        print(f"  {server.name}: {running.wait_ready()} on port {running.port}", flush=True)
        print("call set-ups (SIPp)", flush=True)
        rates = ladder(plan.rates, lambda r: measure_rate(running, plan, r), rate_held)
        print("concurrent calls with RTP (load generator)", flush=True)
        held = ladder(plan.calls, lambda n: measure_calls(running, plan, n), calls_held)
    result: dict[str, Any] = {
        "bench": "sip",
        "date": time.strftime("%Y-%m-%d"),
        "quick": plan.quick,
        "command": " ".join(["python -m bench.sip", *sys.argv[1:]]),
        "cores": cores(),
        "machine_cores": os.cpu_count(),
        "server": server.description,
        "shape": shape_suffix(args.loops, args.threads),
        "sipp": sipp.version(),
        "seconds": plan.seconds,
        "hold": plan.hold,
        "rates": rates,
        "setup_rate": best(rates, "rate"),
        "held": held,
        "calls_held": best(held, "calls"),
    }
    print()
    print(table(RATE_HEADERS, rate_rows(rates)))
    print()
    print(table(HELD_HEADERS, held_rows(held)))
    print()
    for target, shown, met in targets(result):
        print(f"  {({True: 'met', False: 'MISSED', None: 'n/a'})[met]:>6}  {target}: {shown}")
    write(result)
    finish(result, args)


def shape_suffix(loops: int | None, threads: int | None) -> str:
    """``-2loops-1threads`` for a server split as asked; empty for the server's own split."""
    if loops is None and threads is None:
        return ""
    return f"-{loops or 'default'}loops-{threads or 'default'}threads"


def write(result: dict[str, Any]) -> None:
    """``bench/results/DATE-Nc-sip[-Lloops-Tthreads][-quick].json`` and ``.md``."""
    quick = "-quick" if result["quick"] else ""
    stem = RESULTS / f"{result['date']}-{result['cores']}c-sip{result['shape']}{quick}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {stem}.json, .md", flush=True)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument(
        "--rates",
        help=f"comma-separated call set-ups per second (default: {','.join(map(str, RATES))})",
    )
    p.add_argument(
        "--calls", help=f"comma-separated concurrent calls (default: {','.join(map(str, CALLS))})"
    )
    p.add_argument("--seconds", type=float, help="seconds per rate and per point (10; quick: 3)")
    p.add_argument("--hold", type=float, default=0.5, help="seconds each set-up call lasts (0.5)")
    p.add_argument("--loops", type=int, help="the server's event-loop threads (its own split)")
    p.add_argument("--threads", type=int, help="the server's stage threads (its own split)")
    main(p.parse_args())
