"""The echo benchmark's schedule on one setup: which rows (servers under test) run at which
load point, in which order, and that a row that saturates is loaded no further, at the
first point as at any other. Nothing is started or loaded: the servers are stand-ins and
the measurements are made up."""

from __future__ import annotations

from typing import Any

import pytest

from bench.echo import __main__ as echo
from bench.echo.cpus import Setup
from bench.echo.loadgen import Load

ROWS = [row for row in echo.ROWS if row.key in ("floor", "flowcat-ft", "flowcat-gil")]
"""Three rows on three servers, each row named as its server is."""
POINTS = [10, 50, 100, 200]


class StandIn:
    """A started server, as far as the sweep needs one."""

    def __init__(self, name: str) -> None:
        self.name = name

    def stop(self) -> None:
        pass


@pytest.fixture
def bench(monkeypatch):
    """Runs the rows at POINTS through ``run_servers``; returns the (row, calls) of each run,
    in order. ``saturating``: the calls from which each row saturates."""
    measured: list[tuple[str, int]] = []
    saturating: dict[str, int] = {}

    def measure(running: StandIn, load: Load) -> dict[str, Any]:
        measured.append((running.name, load.calls))
        saturated = load.calls >= saturating.get(running.name, 10**9)
        return {
            "calls": load.calls,
            "rtt_ms": {"p99": 500.0 if saturated else 1.0},
            "throughput": 1.0,
            "server_cpu_cores": 0.1,
        }

    monkeypatch.setattr(echo, "start", lambda named, cpus=None: {k: StandIn(k) for k in named})
    monkeypatch.setattr(echo, "measure", measure)
    monkeypatch.setattr(echo.servers, "wait_quiet", lambda running: None)

    def run(**saturate_at: int) -> list[tuple[str, int]]:
        saturating.update({key.replace("_", "-"): calls for key, calls in saturate_at.items()})
        plan = echo.Plan(ROWS, POINTS, 1.0, 0.0, 1, quick=True, setups=[Setup()])
        runs, _, _ = echo.run_servers(plan, Setup(), {row.server: None for row in ROWS}, False)
        assert [(run["server"], run["calls"]) for run in runs] == measured
        return measured

    return run


def calls_of(measured: list[tuple[str, int]], row: str) -> list[int]:
    return [calls for name, calls in measured if name == row]


def test_a_row_saturated_at_the_first_point_runs_no_other(bench):
    measured = bench(flowcat_gil=10)

    assert calls_of(measured, "flowcat-gil") == [10]
    assert calls_of(measured, "flowcat-ft") == POINTS
    assert calls_of(measured, "floor") == POINTS


def test_a_row_saturated_at_a_later_point_runs_no_further(bench):
    measured = bench(flowcat_gil=50)

    assert calls_of(measured, "flowcat-gil") == [10, 50]
    assert calls_of(measured, "flowcat-ft") == POINTS


def test_the_rows_order_rotates_at_every_point_the_first_included(bench):
    measured = bench()

    orders = [[name for name, calls in measured if calls == point] for point in POINTS]
    assert orders == [
        ["floor", "flowcat-ft", "flowcat-gil"],
        ["flowcat-ft", "flowcat-gil", "floor"],
        ["flowcat-gil", "floor", "flowcat-ft"],
        ["floor", "flowcat-ft", "flowcat-gil"],
    ]


def test_the_sweep_ends_once_every_row_has_saturated(bench):
    measured = bench(floor=10, flowcat_ft=10, flowcat_gil=50)

    assert measured == [("floor", 10), ("flowcat-ft", 10), ("flowcat-gil", 10), ("flowcat-gil", 50)]
