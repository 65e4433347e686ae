"""Echo benchmark: flowcat-ft on 3.13t against its GIL twin, pipecat and a bare floor.

A native load generator (``bench/loadgen/loadgen.c``) opens N calls to each server, each
sending 160-byte µ-law frames at 50 fps, and measures every echo's round trip; the RTP rows
place SIP calls instead (INVITE/ACK/BYE over UDP) and send the frames as PCMU RTP. Every point
(10, 50, 100, 200, 300, 400, 500 calls, then more while any server holds) runs for every
server, interleaved: at each point the servers take turns, in an order rotated from point
to point, so noise from the rest of the machine falls on all of them. A server whose p99
passes 100 ms, or that loses over 2% of the frames, is not loaded further.

Besides round trips, each run records the server's CPU (all its processes) and context
switches per echoed frame, both also by thread, and the CPU that others on the machine used
meanwhile; each server's RSS per idle session is measured once, after its first point. The
full run first picks flowcat-ft's best configuration on each build (1 or 2 event-loop
threads x 1 or 2 stage threads) by measurement, and ends with 60 s at 10 calls on
flowcat-ft for the tail-latency target. It writes ``bench/results/DATE-Nc-echo.{json,md,png}``.
``--quick`` runs 50 and 200 calls, 5 s each. ``--cpus`` pins the servers and the load
generator to CPUs; ``--cpus`` given several times, or ``--scaling``, repeats the whole run on
each setup of CPUs (memory and the long run on the last), for a scaling curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench._common import ROOT, cores, finish, header, parser, plot_on_gil, table
from bench.echo import cpus, loadgen, report, servers
from bench.echo.cpus import Setup
from bench.echo.loadgen import Load
from bench.echo.servers import Running, Server, Usage

POINTS = (10, 50, 100, 200, 300, 400, 500)
MORE_POINTS = (600, 800, 1000, 1200, 1500)
QUICK_POINTS = (50, 200)
SATURATED_P99_MS = 100.0
SATURATED_THROUGHPUT = 0.98
CONFIGS = ((1, 1), (1, 2), (2, 1), (2, 2))
"""(event-loop threads, stage threads) tried for flowcat-ft on each build."""
TUNING_POINTS = (200, 400)
LONG_RUN = Load(10, "raw", seconds=60.0)
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "tmp"


@dataclass(frozen=True)
class Row:
    """One line of every table: a server under test loaded with one message format."""

    key: str
    label: str
    server: str
    mode: str


ROWS = (
    Row(report.FLOOR, "floor (3.13t)", "floor", "raw"),
    Row(report.FLOWCAT, "flowcat-ft (3.13t)", "flowcat-ft", "raw"),
    Row(report.FLOWCAT_GIL, "flowcat-ft (GIL)", "flowcat-gil", "raw"),
    Row(report.PIPECAT, "pipecat websockets", "pipecat", "raw"),
    Row("pipecat-fastapi", "pipecat FastAPI+Twilio", "pipecat-fastapi", "twilio"),
    Row(report.FLOOR_TWILIO, "floor Twilio (3.13t)", "floor", "twilio"),
    Row(report.FLOWCAT_TWILIO, "flowcat-ft Twilio (3.13t)", "flowcat-ft", "twilio"),
    Row(report.FLOWCAT_RTP, "flowcat-ft SIP/RTP (3.13t)", "flowcat-ft", "rtp"),
    Row(report.FLOWCAT_RTP_PACED, "flowcat-ft RTP paced (3.13t)", "flowcat-ft-paced", "rtp"),
)
QUICK_ROWS = tuple(row.key for row in ROWS[:5])


# -- one measurement -------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """The server and the machine at one edge of the measured window."""

    time: float
    cpu: float
    threads: dict[int, tuple[str, Usage]]
    machine: tuple[float, float]

    @classmethod
    def take(cls, running: Running) -> Mark:
        now = time.monotonic()
        return cls(now, running.cpu_seconds(), running.threads(), servers.machine_busy())


def measure(running: Running, load: Load) -> dict[str, Any]:
    """Run ``load`` against a server; the load generator's report plus, over the measured
    window, the server's CPU (cores, and µs per echoed frame) and context switches per
    echoed frame, both also by thread, and the CPU everyone else used."""
    marks: dict[str, Mark] = {}

    def on_progress(line: str) -> None:
        if line in ("measure", "measured"):
            marks[line] = Mark.take(running)

    result = loadgen.run(running.port, load, on_progress)
    begin, end = marks["measure"], marks["measured"]
    seconds = end.time - begin.time
    cpu = end.cpu - begin.cpu
    busy, total = (b - a for a, b in zip(begin.machine, end.machine, strict=True))
    machine_cores = busy / max(total, 1e-9) * (os.cpu_count() or 1)
    loadgen_cores = result["loadgen_cpu_percent"] / 100
    received = result["received"]
    by_thread = servers.used_by_name(begin.threads, end.threads)
    switches = sum(by_thread.values(), Usage(threads=0))
    return {
        **result,
        "server_cpu_cores": round(cpu / seconds, 3),
        "cpu_us_per_frame": per_frame(cpu * 1e6, received, 1),
        "voluntary_switches_per_frame": per_frame(switches.voluntary, received, 3),
        "nonvoluntary_switches_per_frame": per_frame(switches.nonvoluntary, received, 3),
        "other_cpu_cores": round(max(0.0, machine_cores - cpu / seconds - loadgen_cores), 3),
        "threads": thread_costs(by_thread, received, seconds),
    }


def per_frame(value: float, frames: int, digits: int) -> float | None:
    return round(value / frames, digits) if frames else None


def thread_costs(used: dict[str, Usage], frames: int, seconds: float) -> list[dict[str, Any]]:
    """What each thread (threads sharing a name together) used per echoed frame, and in
    cores; the busiest first."""
    return [
        {
            "name": name,
            "threads": u.threads,
            "cores": round(u.cpu / seconds, 3),
            "cpu_us_per_frame": per_frame(u.cpu * 1e6, frames, 1),
            "voluntary_switches_per_frame": per_frame(u.voluntary, frames, 3),
            "nonvoluntary_switches_per_frame": per_frame(u.nonvoluntary, frames, 3),
        }
        for name, u in sorted(used.items(), key=lambda item: -item[1].cpu)
    ]


def idle_memory(running: Running, load: Load) -> dict[str, Any]:
    """RSS growth of the server per idle session: ``load.calls`` connections that each sent
    one frame (so the call exists), sampled 1 s after the last opened."""
    before = running.rss_bytes()
    sample: dict[str, int] = {}

    def on_progress(line: str) -> None:
        if line.startswith("open "):
            time.sleep(1.0)
            sample["rss"] = running.rss_bytes()

    result = loadgen.run(running.port, load, on_progress)
    opened = result["opened"]
    grown = sample["rss"] - before
    return {
        "calls": load.calls,
        "opened": opened,
        "rss_before": before,
        "bytes_per_session": round(grown / opened) if opened else None,
    }


def saturated(run: dict[str, Any]) -> bool:
    p99 = run["rtt_ms"]["p99"]
    return p99 is None or p99 > SATURATED_P99_MS or (run["throughput"] or 0) < SATURATED_THROUGHPUT


def describe(run: dict[str, Any], label: str) -> str:
    rtt = run["rtt_ms"]
    p99 = "-" if rtt["p99"] is None else f"{rtt['p99']:.2f}"
    return (
        f"  {run['calls']:>5} calls  {label:<26} p99 {p99:>8} ms  "
        f"throughput {run['throughput'] or 0:.4f}  server {run['server_cpu_cores']:.2f} cores"
    )


# -- the servers -----------------------------------------------------------------------------


def start(named: dict[str, Server], cpus: tuple[int, ...] | None = None) -> dict[str, Running]:
    """Start every server side by side (on ``cpus`` if given) and wait until all are ready."""
    running = {
        key: Running(server, LOGS / f"echo-{key}.log", cpus) for key, server in named.items()
    }
    try:
        for r in running.values():
            print(f"  {r.server.name}: {r.wait_ready()} on port {r.port}", flush=True)
    except BaseException:
        for r in running.values():
            r.stop()
        raise
    return running


def tune(build: str, seconds: float, warmup: float) -> tuple[tuple[int, int], list[dict]]:
    """Load flowcat-ft on ``build`` in each of :data:`CONFIGS` at :data:`TUNING_POINTS`; the
    configuration that held the most calls at p99 ≤ 5 ms (then: the lowest p99 at the first
    point) wins. Returns it and every trial."""
    trials = []
    for loops, threads in CONFIGS:
        server = servers.flowcat(build, loops, threads)
        with start({build: server})[build] as running:
            for calls in TUNING_POINTS:
                servers.wait_quiet(running)
                run = measure(running, Load(calls, "raw", seconds, warmup))
                trials.append({**run, "build": build, "loops": loops, "stage_threads": threads})
                print(describe(run, f"{build} {loops} loops, {threads} threads"), flush=True)

    def score(config: tuple[int, int]) -> tuple[int, float]:
        mine = [t for t in trials if (t["loops"], t["stage_threads"]) == config]
        held = max((t["calls"] for t in mine if report.held(t, 5.0)), default=0)
        first = mine[0]["rtt_ms"]["p99"]
        return held, -(first if first is not None else float("inf"))

    return max(CONFIGS, key=score), trials


# -- the run ---------------------------------------------------------------------------------


class Sweep:
    """Loads one setup's servers with the plan's rows, point after point, over one or more
    calls of :meth:`run` (the idle-memory runs come between the first point and the rest).

    At each point every row still holding runs once, the rows' order rotated one place from
    the point before; a row that saturates is not loaded again in this sweep, whichever
    call of :meth:`run` it saturated in. Each run records the setup's CPUs.
    """

    def __init__(self, plan: Plan, setup: Setup, running: dict[str, Running]) -> None:
        self.plan = plan
        self.setup = setup
        self.running = running
        self.runs: list[dict[str, Any]] = []
        self.stopped: set[str] = set()  # the keys of the rows that saturated
        self._points_run = 0

    def run(self, points: Sequence[int]) -> None:
        """Run ``points``, in order, after the points of the calls before."""
        for calls in points:
            active = [row for row in self.plan.rows if row.key not in self.stopped]
            if not active:
                return
            turn = self._points_run % len(active)
            self._points_run += 1
            for row in active[turn:] + active[:turn]:
                self._run_one(row, calls)

    def _run_one(self, row: Row, calls: int) -> None:
        r = self.running[row.server]
        servers.wait_quiet(r)
        plan = self.plan
        load = Load(calls, row.mode, plan.seconds, plan.warmup, cpus=self.setup.loadgen)
        run = {"server": row.key, **cpu_record(self.setup), **measure(r, load)}
        self.runs.append(run)
        print(describe(run, row.label), flush=True)
        if saturated(run):
            self.stopped.add(row.key)


def cpu_record(setup: Setup) -> dict[str, Any]:
    """The setup's CPUs, as the JSON records them (None: not pinned)."""
    return {
        "cores": setup.cores,
        "server_cpus": list(setup.server) if setup.server else None,
        "loadgen_cpus": list(setup.loadgen) if setup.loadgen else None,
    }


@dataclass(frozen=True)
class Plan:
    """What one invocation runs: every row at every point, once per setup (one unpinned
    setup unless ``--cpus`` or ``--scaling`` say otherwise)."""

    rows: list[Row]
    points: list[int]
    seconds: float
    warmup: float
    idle_calls: int
    quick: bool
    setups: list[Setup]

    @property
    def pinned(self) -> bool:
        return self.setups != [Setup()]


def make_plan(args: argparse.Namespace) -> Plan:
    keys = args.servers.split(",") if args.servers else QUICK_ROWS if args.quick else None
    points = [int(p) for p in args.points.split(",")] if args.points else None
    return Plan(
        rows=[row for row in ROWS if keys is None or row.key in keys],
        points=points or list(QUICK_POINTS if args.quick else POINTS + MORE_POINTS),
        seconds=args.seconds or (5.0 if args.quick else 10.0),
        warmup=1.0 if args.quick else 2.0,
        idle_calls=args.idle_calls or (100 if args.quick else 500),
        quick=args.quick,
        setups=cpus.ladder(args.scaling) if args.scaling else args.cpus or [Setup()],
    )


def default_config(build: str, cores: int) -> tuple[int | None, int | None]:
    """flowcat-ft's (loops, threads) untuned: on 3.13t the server's own split of the cores
    it runs on (None, None: see ``flowcat_ft.transports.server.split_cores``; its ready line
    says what it chose), one of each on the GIL build (two threads contend for its GIL)."""
    return (None, None) if build == "ft" else (1, 1)


def choose_configs(
    plan: Plan, given: dict[str, tuple[int, int] | None]
) -> tuple[dict[str, tuple[str, tuple[int, int] | None]], list[dict[str, Any]]]:
    """How flowcat-ft's (loops, threads) is picked on each build the plan runs: ``given``,
    chosen by :func:`tune` (a full run on any CPU), or left to :func:`default_config` (None:
    quick or pinned runs). Returns (how, config) by build, and the trials."""
    picked: dict[str, tuple[str, tuple[int, int] | None]] = {}
    trials: list[dict[str, Any]] = []
    for build in ("ft", "gil"):
        if not any(row.server == f"flowcat-{build}" for row in plan.rows):
            continue
        if given[build] is not None:
            picked[build] = ("given", given[build])
        elif plan.quick or plan.pinned:
            picked[build] = ("default", None)
        else:
            print(f"choosing flowcat-ft's configuration on {build}", flush=True)
            config, tried = tune(build, plan.seconds, plan.warmup)
            picked[build] = ("chosen by measurement", config)
            trials += tried
    return picked, trials


def configs_for(
    picked: dict[str, tuple[str, tuple[int, int] | None]], cores: int
) -> dict[str, dict[str, Any]]:
    """flowcat-ft's configuration on each build for servers on ``cores`` CPUs."""
    configs = {}
    for build, (how, config) in picked.items():
        loops, threads = config or default_config(build, cores)
        configs[build] = {"loops": loops, "threads": threads, "how": how}
    return configs


def servers_for(
    cores: int, configs: dict[str, dict[str, Any]], rtp: bool = False
) -> dict[str, Server]:
    """Every server, sized to ``cores`` CPUs: the floor's event loops, pipecat's worker
    processes, flowcat-ft's loops and stage threads (``configs``); with ``rtp``,
    flowcat-ft on 3.13t also answers SIP calls with unpaced RTP (the WebSocket rows'
    shape), and ``flowcat-ft-paced`` with paced RTP (a phone call's)."""

    def flowcat(build: str, sip: str | None = None) -> Server:
        config = configs.get(build, {})
        return servers.flowcat(build, config.get("loops"), config.get("threads"), sip)

    return {
        "floor": servers.floor(cores),
        "flowcat-ft": flowcat("ft", "unpaced" if rtp else None),
        "flowcat-ft-paced": flowcat("ft", "paced"),
        "flowcat-gil": flowcat("gil"),
        "pipecat": servers.pipecat("websockets", cores),
        "pipecat-fastapi": servers.pipecat("fastapi", cores),
    }


def run_servers(
    plan: Plan, setup: Setup, named: dict[str, Server], extras: bool
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Start the plan's servers on the setup's CPUs; run the first point, (``extras``) the
    idle-memory runs, the other points and (``extras``, full runs) the long run on
    flowcat-ft. Returns runs, memory by server, long run."""
    needed = {row.server: named[row.server] for row in plan.rows}
    print(f"starting {len(needed)} servers, {setup.describe()}", flush=True)
    running = start(needed, setup.server)
    memory: dict[str, dict[str, Any]] = {}
    long_run = None
    try:
        sweep = Sweep(plan, setup, running)
        sweep.run(plan.points[:1])
        for row in plan.rows if extras else ():
            if row.server not in memory:
                print(f"memory per idle session of {row.server}", flush=True)
                servers.wait_quiet(running[row.server])
                load = Load(plan.idle_calls, row.mode, 1.5, idle=True, cpus=setup.loadgen)
                memory[row.server] = idle_memory(running[row.server], load)
        sweep.run(plan.points[1:])
        if extras and not plan.quick and "flowcat-ft" in running:
            print(f"{LONG_RUN.seconds:g} s at {LONG_RUN.calls} calls on flowcat-ft", flush=True)
            servers.wait_quiet(running["flowcat-ft"])
            load = dataclasses.replace(LONG_RUN, cpus=setup.loadgen)
            long_run = {**cpu_record(setup), **measure(running["flowcat-ft"], load)}
    finally:
        for r in running.values():
            r.stop()
    return sweep.runs, memory, long_run


def main(args: argparse.Namespace) -> None:
    header("echo", args)
    loadgen.build()
    plan = make_plan(args)
    if args.scaling and len(plan.setups) < len(args.scaling):
        print(f"scaling stops at {plan.setups[-1].cores} cores: the machine has no more")
    uses_pipecat = any(row.server.startswith("pipecat") for row in plan.rows)
    pipecat_version = servers.ensure_pipecat_venv() if uses_pipecat else None
    picked, tuning = choose_configs(plan, {"ft": args.ft_config, "gil": args.gil_config})
    runs: list[dict[str, Any]] = []
    setups: list[dict[str, Any]] = []
    for setup in plan.setups:
        configs = configs_for(picked, setup.cores)
        named = servers_for(setup.cores, configs, any(row.mode == "rtp" for row in plan.rows))
        last = setup is plan.setups[-1]
        done, memory, long_run = run_servers(plan, setup, named, extras=last)
        runs += done
        row_args = {row.key: list(named[row.server].args) for row in plan.rows}
        setups.append({**cpu_record(setup), "configs": configs, "args": row_args})
    # From here on, named, memory and long_run are the last setup's.
    first_row = {row.server: row for row in reversed(plan.rows)}
    result: dict[str, Any] = {
        "bench": "echo",
        "date": time.strftime("%Y-%m-%d"),
        "quick": plan.quick,
        "command": " ".join(["python -m bench.echo", *sys.argv[1:]]),
        "cores": cores(),
        "machine_cores": os.cpu_count(),
        "seconds": plan.seconds,
        "warmup": plan.warmup,
        "points": plan.points,
        "pipecat": pipecat_version,
        "labels": {row.key: row.label for row in plan.rows},
        "servers": {
            row.key: {
                "mode": row.mode,
                "description": named[row.server].description,
                "python": str(named[row.server].python.relative_to(ROOT)),
                "module": named[row.server].module,
                **({"idle": memory[row.server]} if first_row[row.server] is row else {}),
            }
            for row in plan.rows
        },
        "setups": setups,
        "tuning": tuning,
        "runs": runs,
        "long_run": long_run,
    }
    print()
    print(table(report.HEADERS, report.rows(runs, result["labels"])))
    print()
    if len(setups) > 1:
        print(table(report.scaling_headers(result), report.scaling_rows(result)))
        print()
    print(table(report.THREAD_HEADERS, report.thread_rows(runs, result["labels"])))
    print()
    print(table(("server", "idle sessions", "RSS per session, B"), report.memory_rows(result)))
    print()
    for target, shown, met in report.targets(result):
        print(f"  {({True: 'met', False: 'MISSED', None: 'n/a'})[met]:>6}  {target}: {shown}")
    if not plan.quick:
        write(result)
    finish(result, args)


def write(result: dict[str, Any]) -> None:
    """``bench/results/DATE-Nc-echo.json``, ``.md`` and (with matplotlib) ``.png``."""
    stem = RESULTS / f"{result['date']}-{result['cores']}c-echo"
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plotted = plot_on_gil("bench.echo.plot", json_path, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(report.markdown(result, plotted))
    print(f"wrote {stem}.json, .md" + (", .png" if plotted else ""), flush=True)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--points", help="comma-separated call counts (default: the full ladder)")
    p.add_argument("--seconds", type=float, help="measured seconds per point (10; quick: 5)")
    p.add_argument(
        "--servers", help=f"comma-separated rows (default: all): {','.join(r.key for r in ROWS)}"
    )
    for build, untuned in {"ft": "one of each per core", "gil": "1,1"}.items():
        p.add_argument(
            f"--{build}-config",
            type=lambda s: tuple(int(v) for v in s.split(",")),
            help=f"LOOPS,THREADS for flowcat-ft on {build} (default: chosen by measurement; "
            f"quick or pinned: {untuned})",
        )
    p.add_argument("--idle-calls", type=int, help="idle sessions for RSS (500; quick: 100)")
    pinning = p.add_mutually_exclusive_group()
    pinning.add_argument(
        "--cpus",
        action="append",
        type=cpus.parse_setup,
        metavar="SERVER[:LOADGEN]",
        help="pin the servers to these CPUs (e.g. 0-1) and the load generator to LOADGEN "
        "(e.g. 0-1:2); given several times, the whole run repeats on each",
    )
    pinning.add_argument(
        "--scaling",
        type=cpus.parse_counts,
        metavar="N,N,...",
        help="repeat the run with the servers on the first N CPUs for each N the machine has "
        "(e.g. 1,2,4,8,12), the load generator on the last CPU where they leave it free",
    )
    main(p.parse_args())
