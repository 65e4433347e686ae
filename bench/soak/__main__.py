"""Soak: ``flowcat-ft serve`` over a long run at steady load, calls starting and ending.

The echo agent is served by the real command line (``python -m flowcat_ft.cli serve``,
with a config file: no playground, no WebRTC, warnings only) on the 3.13t venv, and loaded
for an hour (``--quick``: 5 minutes; ``--seconds``: any length) at ``--load`` (0.8) of a
capacity: ``--capacity N`` calls, or by default the most calls flowcat-ft held at p99 ≤ 5 ms
in the latest committed echo result (``bench/results/*-echo.json``). The echo kit's native
load generator keeps that many calls up: each lasts a log-normal length (median
``--call-length``, 30 s; from a tenth of that to ten times it: most calls short, a few
long), then hangs up cleanly, and its slot dials a new call within a second, so calls start
and end all along. Each call sends 160-byte µ-law frames at 50 fps and measures each echo.

Every ``--interval`` seconds (60) the run records that interval's round trips (p50, p99,
p99.9, max), frames lost and calls started and ended, and samples the server: its RSS, open
file descriptors and threads, slabs in use, garbage collections and their pauses (from its
``/status.json``), and its CPU (``/proc``), with what the rest of the machine used
meanwhile, the CPU time the hypervisor stole, and the machine's worst hiccup: how late a
separate process that only sleeps 1 ms at a time was woken (``bench.soak.hiccups``), so a
round-trip stall that the machine caused shows as one. At the end it waits for the server
to have no call and checks every slab is back. ``--trace-memory`` runs the server with
``tracemalloc`` on (``PYTHONTRACEMALLOC=1``: it slows every allocation, so judge latency
without it) and samples the memory Python's objects hold beside RSS: RSS that grows while
that stays flat is the allocator keeping pages, not objects kept. It writes
``bench/results/DATE-Nc-soak[-quick][-Ncalls].{json,md,png}`` (``-Ncalls`` with
``--capacity``; the plot with matplotlib on the GIL venv, as the echo kit's); the last
line of output is the JSON result.

Round trips include the server's output pacing (the echo agent sends audio at real time,
as to a carrier): after a stall of the server or the machine a call's audio stays that much
behind until the call ends, as a carrier's jitter buffer would hold it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

from bench._common import ROOT, cores, finish, header, parser, plot_on_gil, python_of
from bench.echo import loadgen, report
from bench.echo.loadgen import Load
from bench.echo.servers import TICK, free_port, machine_busy
from bench.soak.summary import line, markdown, summarise, table_text

RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "tmp"
QUICK_SECONDS = 300.0
FULL_SECONDS = 3600.0
WARMUP = 10.0  # seconds of traffic before the first interval is measured


def latest_echo_capacity() -> tuple[int, str]:
    """Calls flowcat-ft held at p99 ≤ 5 ms in the newest committed full echo result."""
    results = sorted(RESULTS.glob("*-echo.json"))
    for path in reversed(results):
        result = json.loads(path.read_text())
        if not result.get("quick"):
            return report.capacity(result["runs"], "flowcat-ft", 5.0), path.name
    raise SystemExit("no echo result in bench/results: give --capacity N")


class Server:
    """``flowcat-ft serve`` with the echo agent on a free port of 127.0.0.1."""

    def __init__(self, log: Path, trace_memory: bool = False) -> None:
        self.port = free_port()
        config = LOGS / "soak-agent.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {self.port}, playground: false, webrtc: false}}\n"
            # One load generator dials every call: its handshakes are not a flood.
            "limits: {max_calls: 100000, handshakes_per_minute: 100000}\n"
            "logging: {level: WARNING}\n"
        )
        self.command = [
            str(python_of("ft")),
            "-m",
            "flowcat_ft.cli",
            "serve",
            str(config.relative_to(ROOT)),
            "--agent",
            "echo",
        ]
        env = {**os.environ, "PYTHONTRACEMALLOC": "1"} if trace_memory else None
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
            )

    def get(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode})")
            try:
                self.get("/ready")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def status(self) -> dict[str, Any]:
        return json.loads(self.get("/status.json"))

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (as an orchestrator stops it); SIGKILL if it has not exited in time."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Hiccups:
    """The hiccup meter (``bench.soak.hiccups``) as a child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.soak.hiccups"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def take(self) -> dict[str, float]:
        """The worst oversleep (``max_ms``) and the wake-ups since the last call."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def stolen_seconds() -> float:
    """CPU seconds the hypervisor gave other guests while this machine wanted to run
    (``steal`` in ``/proc/stat``), over all cores so far."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / TICK


class Sampler:
    """Joins each interval's round trips (from the load generator) with a sample of the
    server and of the machine taken as the interval ends, into one row."""

    def __init__(self, server: Server, hiccups: Hiccups) -> None:
        self.server = server
        self.hiccups = hiccups
        self.rows: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._cpu = server.cpu_seconds()
        self._machine = machine_busy()[0]
        self._stolen = stolen_seconds()
        self._lock = threading.Lock()

    def sample(self) -> dict[str, Any]:
        """The server now: its status (less the per-call list), its CPU and the machine's
        since last time, and the machine's worst hiccup since last time."""
        status = self.server.status()
        cpu, machine, stolen = self.server.cpu_seconds(), machine_busy()[0], stolen_seconds()
        with self._lock:
            used, busy = cpu - self._cpu, machine - self._machine
            steal = stolen - self._stolen
            self._cpu, self._machine, self._stolen = cpu, machine, stolen
            hiccup = self.hiccups.take()
        gc = status["gc"]
        return {
            "at_s": round(time.monotonic() - self.started, 1),
            "server_cpu_s": round(used, 2),
            "machine_busy_s": round(busy, 2),
            "machine_steal_s": round(steal, 2),
            "machine_hiccup_max_ms": hiccup["max_ms"],
            "calls_active": len(status["calls"]),
            "rss_bytes": status["process"]["rss_bytes"],
            "traced_bytes": status["process"]["traced_bytes"],
            "open_fds": status["process"]["open_fds"],
            "threads": status["process"]["threads"],
            "slabs_in_use": status["slabs"]["in_use"],
            "slab_drops": status["slabs"]["drops"],
            "gc_collections": gc["collections"],
            "gc_collected": gc["collected"],
            "gc_reasons": gc["reasons"],
            "gc_pauses": gc["all_pauses"]["count"],
            "gc_max_pause_ms": gc["all_pauses"]["max_us"] / 1000,
            "gc_garbage": gc["garbage"],
        }

    def on_interval(self, interval: dict[str, Any]) -> None:
        row = {key: value for key, value in interval.items() if key != "interval"}
        row.update(self.sample())
        self.rows.append(row)
        print(line(row), flush=True)


def main(args: Any) -> None:
    header("soak", args)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    if args.capacity:
        capacity, source = args.capacity, "--capacity"
    else:
        capacity, source = latest_echo_capacity()
    calls = max(1, round(capacity * args.load))
    interval = min(args.interval, seconds)
    print(
        f"# {calls} calls ({args.load:g} of {capacity}, from {source}), {seconds:g} s, "
        f"calls of {args.call_length:g} s median, a row per {interval:g} s",
        flush=True,
    )
    LOGS.mkdir(parents=True, exist_ok=True)
    server = Server(LOGS / "soak-server.log", args.trace_memory)
    hiccups = Hiccups()
    try:
        server.wait_ready()
        sampler = Sampler(server, hiccups)
        start = sampler.sample()
        load = Load(
            calls,
            seconds=seconds,
            warmup=WARMUP,
            churn=args.call_length,
            report=interval,
        )
        totals = loadgen.run(server.port, load, on_interval=sampler.on_interval)
        end = wait_for_calls_to_end(sampler)
    finally:
        exit_code = server.stop()
        hiccups.stop()
    result = {
        "bench": "soak",
        "date": date.today().isoformat(),
        "quick": bool(args.quick),
        "command": args.command,
        "server_command": " ".join(server.command[1:]),
        "cores": cores(),
        "seconds": seconds,
        "interval_s": interval,
        "capacity": capacity,
        "capacity_from": source,
        "load": args.load,
        "calls": calls,
        "call_length_median_s": args.call_length,
        "trace_memory": args.trace_memory,
        "start": start,
        "rows": sampler.rows,
        "end": end,
        "totals": totals,
        "server_exit_code": exit_code,
    }
    result["summary"] = summarise(result)
    print(table_text(result))
    for name, shown, met in result["summary"]["targets"]:
        print(f"  {name}: {shown}" + ("" if met is None else f" ({'met' if met else 'NOT met'})"))
    if not args.no_write:
        write(result)
    finish(result, args)


def wait_for_calls_to_end(sampler: Sampler, timeout: float = 30.0) -> dict[str, Any]:
    """The server once its last call has ended and its slabs are back (or ``timeout``
    seconds later): the sample, and how long that took."""
    began = time.monotonic()
    while True:
        sample = sampler.sample()
        waited = time.monotonic() - began
        if (sample["calls_active"] == 0 and sample["slabs_in_use"] == 0) or waited > timeout:
            return {**sample, "waited_s": round(waited, 2)}
        time.sleep(0.2)


def write(result: dict[str, Any]) -> None:
    """``bench/results/DATE-Nc-soak[-quick].json``, ``.md`` and (with matplotlib) ``.png``."""
    quick = "-quick" if result["quick"] else ""
    calls = f"-{result['calls']}calls" if result["capacity_from"] == "--capacity" else ""
    stem = RESULTS / f"{result['date']}-{cores()}c-soak{quick}{calls}"
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plotted = plot_on_gil("bench.soak.plot", json_path, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown(result, plotted))
    print(f"wrote {stem}.json, .md" + (", .png" if plotted else ""), flush=True)


if __name__ == "__main__":
    import sys

    p = parser(__doc__)
    p.add_argument("--seconds", type=float, help="length of the run (3600; quick: 300)")
    p.add_argument("--capacity", type=int, help="calls the server holds (default: echo result)")
    p.add_argument("--load", type=float, default=0.8, help="fraction of the capacity (0.8)")
    p.add_argument("--call-length", type=float, default=30.0, help="median call, s (30)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds per row (60)")
    p.add_argument("--no-write", action="store_true", help="write no files in bench/results")
    p.add_argument(
        "--trace-memory", action="store_true", help="sample tracemalloc's figure beside RSS"
    )
    parsed = p.parse_args()
    parsed.command = "python -m bench.soak " + " ".join(sys.argv[1:])
    if not math.isfinite(parsed.load) or not 0 < parsed.load <= 2:
        p.error("--load must be in (0, 2]")
    main(parsed)
