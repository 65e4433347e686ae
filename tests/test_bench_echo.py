"""The echo benchmark kit works: its load generator builds from source, loads flowcat-ft's
benchmark echo server (in-process) with 5 calls for 1 s in each message format, and every
frame comes back with its round trip measured."""

from __future__ import annotations

import pytest
from peers import missing

from bench.echo import loadgen
from bench.echo.flowcat_server import start
from flowcat_ft.transports.server import WebSocketServer


@pytest.fixture(scope="module", autouse=True)
def _compiler():
    if loadgen.compiler() is None:
        missing("no C compiler (cc) to build the load generator", "apt-get install gcc")


CALLS = 5


@pytest.fixture(scope="module")
def server():
    server = start(port=0, loops=2, threads=2)
    yield server
    server.stop(grace=1)
    server.runtime.stop()


@pytest.mark.parametrize("mode", ["raw", "twilio"])
def test_every_frame_comes_back_with_its_round_trip(server: WebSocketServer, mode: str):
    progress: list[str] = []
    load = loadgen.Load(CALLS, mode, seconds=1.0, warmup=0.2, grace=2.0)
    report = loadgen.run(server.port, load, progress.append)

    assert progress == [f"open {CALLS}", "measure", "measured"]
    assert (report["opened"], report["failed"], report["closed"]) == (CALLS, 0, 0)
    assert report["expected"] == CALLS * 50  # 50 frames/s for 1 s
    assert report["sent"] == report["received"] == report["expected"]
    assert report["throughput"] == 1.0
    assert (report["corrupt"], report["dropped"]) == (0, 0)
    rtt = report["rtt_ms"]
    assert 0 < rtt["p50"] <= rtt["p90"] <= rtt["p99"] <= rtt["p99.9"] <= rtt["max"] < 1000


def test_idle_calls_open_and_stay_open(server: WebSocketServer):
    report = loadgen.run(server.port, loadgen.Load(CALLS, seconds=0.5, idle=True))

    assert (report["opened"], report["failed"], report["closed"]) == (CALLS, 0, 0)
    assert report["expected"] == report["received"] == 0
    assert report["throughput"] is None


def test_churn_ends_calls_and_dials_new_ones_reporting_each_interval(server: WebSocketServer):
    intervals: list[dict] = []
    load = loadgen.Load(CALLS, seconds=3.0, warmup=0.2, churn=0.4, report=1.0)
    report = loadgen.run(server.port, load, on_interval=intervals.append)

    assert [row["t"] for row in intervals] == [1.0, 2.0, 3.0]
    assert report["calls_opened"] > CALLS  # calls ended and their slots dialled again
    assert report["calls_opened"] == report["calls_ended"]  # every call hung up at the end
    assert (report["calls_failed"], report["closed"], report["corrupt"]) == (0, 0, 0)
    assert sum(row["calls_ended"] for row in intervals) > 0
    assert 0 < report["received"] <= report["sent"] == sum(row["sent"] for row in intervals)
    for row in intervals:
        rtt = row["rtt_ms"]
        assert 0 < rtt["p50"] <= rtt["p99"] <= rtt["p99.9"] <= rtt["max"]
