"""The soak benchmark: its figures from a run's rows, and a few seconds of a real run
through ``flowcat-ft serve`` that samples the server and finds every slab back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from peers import missing

from bench._common import ROOT
from bench.echo import loadgen
from bench.soak.summary import markdown, memory_slope, summarise


def row(t: float, rss_mb: float, p99: float, fds: int = 20, threads: int = 6) -> dict:
    return {
        "t": t,
        "at_s": t,
        "sent": 1000,
        "received": 1000,
        "calls_opened": 3,
        "calls_ended": 3,
        "closed_by_server": 0,
        "calls_up": 8,
        "rtt_ms": {"p50": p99 / 2, "p99": p99, "p99.9": p99 * 1.2, "max": p99 * 2},
        "server_cpu_s": 6.0,
        "machine_busy_s": 30.0,
        "machine_steal_s": 0.0,
        "machine_hiccup_max_ms": 0.5,
        "calls_active": 8,
        "rss_bytes": int(rss_mb * 1e6),
        "open_fds": fds,
        "threads": threads,
        "slabs_in_use": 16,
        "slab_drops": 0,
        "gc_collections": 1,
        "gc_reasons": {"start-up": 1},
        "gc_pauses": 0,
        "gc_max_pause_ms": 0.0,
        "gc_garbage": 0,
    }


def result(rows: list[dict], slabs_at_end: int = 0) -> dict:
    end = {**rows[-1], "slabs_in_use": slabs_at_end, "gc_pauses": 2, "gc_max_pause_ms": 3.5}
    totals = {
        "sent": 4000,
        "received": 3996,
        "calls_opened": 12,
        "calls_failed": 0,
        "rtt_ms": {"max": 9.0},
    }
    return {
        "quick": True,
        "date": "2026-12-06",
        "command": "python -m bench.soak --quick",
        "server_command": "-m flowcat_ft.cli serve soak.yaml --agent echo",
        "calls": 8,
        "load": 0.8,
        "capacity": 10,
        "capacity_from": "--capacity",
        "seconds": 240.0,
        "interval_s": 60.0,
        "call_length_median_s": 30.0,
        "rows": rows,
        "start": rows[0],
        "end": end,
        "totals": totals,
    }


def test_rss_slope_is_the_least_squares_growth_per_hour():
    rows = [row(t, 50 + t / 3600 * 2.0, 1.0) for t in (60, 120, 180, 240)]
    assert memory_slope(rows) == pytest.approx(2.0, rel=1e-3)
    assert memory_slope(rows[:1]) is None
    assert memory_slope(rows, "traced_bytes") is None  # a run without --trace-memory


def test_a_traced_run_shows_python_memory_beside_rss():
    rows = [row(t, 50 + t / 3600 * 2.0, 1.0) for t in (60, 120, 180, 240)]
    for r in rows:
        r["traced_bytes"] = 30_000_000  # flat: the growth is the allocator's
    traced = {**result(rows), "trace_memory": True}
    summary = summarise(traced)
    assert summary["traced_slope_mb_per_h"] == 0.0 and summary["rss_slope_mb_per_h"] > 1.5
    shown = dict((name, (shown, met)) for name, shown, met in summary["targets"])
    assert shown["Python objects' memory slope (tracemalloc)"] == ("0.00 MB/h", None)
    traced["summary"] = summary
    assert "| RSS MB | traced MB | FDs |" in markdown(traced, None)

    untraced = result([row(t, 50.0, 1.0) for t in (60, 120)])
    untraced["summary"] = summarise(untraced)
    assert "traced" not in markdown(untraced, None)


def test_a_steady_run_meets_its_targets_and_a_leaking_one_does_not():
    steady = result([row(t, 50.0, 2.0) for t in (60, 120, 180, 240)])
    summary = summarise(steady)
    assert [met for _, _, met in summary["targets"]] == [True, True, True, True, True, None, True]
    assert summary["frames_lost_percent"] == 0.1
    assert summary["gc_pauses"] == 2

    leaking = [row(60, 50, 2.0), row(120, 60, 2.0, fds=20), row(180, 70, 4.0, fds=40)]
    summary = summarise(result(leaking, slabs_at_end=3))
    verdicts = dict((name, met) for name, _, met in summary["targets"])
    assert verdicts["RSS slope ≤ 1 MB/h after warm-up"] is False
    assert verdicts["FDs flat (less one per live call)"] is False
    assert verdicts["every slab back at the end"] is False
    assert verdicts["p99 in every interval ≤ 1.5x the first's"] is False


def test_fds_are_flat_when_they_follow_the_calls_up():
    rows = [row(t, 50.0, 2.0, fds=20 + 6 * (t == 120)) for t in (60, 120, 180, 240)]
    rows[1]["calls_active"] += 6  # six more calls live, six more connections
    verdicts = dict((name, met) for name, _, met in summarise(result(rows))["targets"])
    assert verdicts["FDs flat (less one per live call)"] is True


def test_the_tail_target_at_few_calls_is_judged_only_at_few_calls():
    light = result([row(t, 50.0, 2.0) for t in (60, 120)])
    light["totals"]["rtt_ms"]["max"] = 25.0
    verdicts = dict((name, met) for name, _, met in summarise(light)["targets"])
    assert verdicts["max round trip ≤ 20.0 ms at 10 calls"] is False
    shown = dict((name, shown) for name, shown, _ in summarise(light)["targets"])
    assert shown["max round trip ≤ 20.0 ms at 10 calls"] == (
        "25.00 ms (the machine's worst hiccup: 0.50 ms)"
    )
    heavy = {**light, "calls": 80}
    assert not any("at 10 calls" in name for name, _, _ in summarise(heavy)["targets"])


def test_the_markdown_has_the_targets_and_a_row_per_interval():
    steady = result([row(t, 50.0, 2.0) for t in (60, 120)])
    steady["summary"] = summarise(steady)
    text = markdown(steady, "soak.png")
    assert "| every slab back at the end | 0 in use | yes |" in text
    assert text.count("\n| 1 |") + text.count("\n| 2 |") == 2  # minutes 1 and 2
    assert "![soak](soak.png)" in text


def test_a_short_soak_through_the_real_server():
    if loadgen.compiler() is None:
        missing("no C compiler (cc) to build the load generator", "apt-get install gcc")
    command = [sys.executable, "-m", "bench.soak", "--seconds", "6", "--interval", "3"]
    command += ["--capacity", "5", "--call-length", "1.5", "--no-write"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads(done.stdout.strip().splitlines()[-1])

    assert run["calls"] == 4 and len(run["rows"]) == 2
    assert run["totals"]["calls_opened"] > 4  # calls ended and new ones started
    for sample in run["rows"]:
        assert sample["rss_bytes"] > 0 and sample["open_fds"] > 0 and sample["threads"] > 0
        assert sample["calls_active"] <= 4
    assert run["end"]["calls_active"] == 0
    assert run["summary"]["slabs_in_use_at_end"] == 0
    assert run["server_exit_code"] == 0  # SIGTERM stopped it cleanly
    for sample in run["rows"]:  # the machine's hiccups and stolen time, measured
        assert sample["machine_hiccup_max_ms"] >= 0 and sample["machine_steal_s"] >= 0


def test_the_hiccup_meter_reports_a_stall_of_its_own_process():
    meter = subprocess.Popen(
        [sys.executable, "-m", "bench.soak.hiccups"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:

        def take() -> dict:
            meter.stdin.write("\n")
            meter.stdin.flush()
            return json.loads(meter.stdout.readline())

        take()
        meter.send_signal(signal.SIGSTOP)  # the machine "stalls" it for 0.2 s
        time.sleep(0.2)
        meter.send_signal(signal.SIGCONT)
        stalled = take()
        assert stalled["max_ms"] >= 150
    finally:
        meter.stdin.close()
        meter.wait(10)
