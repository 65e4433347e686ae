"""The SIP benchmarks work: the load generator's RTP mode sets calls up over SIP and times
every echoed packet against flowcat-ft's benchmark echo server (in-process, both RTP
shapes); SIPp's set-up runs are read correctly; the ladders and verdicts add up."""

from __future__ import annotations

import pytest
from helpers import wait_until
from peers import missing, need_program

from bench.echo import loadgen, report, servers
from bench.echo.flowcat_server import start, start_sip
from bench.sip import __main__ as sip_bench
from bench.sip import sipp

CALLS = 2


@pytest.fixture(params=["unpaced", "paced"])
def sip_server(request):
    server = start(port=0, loops=1, threads=1)
    sip = start_sip(server, request.param)
    yield sip
    sip.stop(grace=1)
    server.stop(grace=1)
    server.runtime.stop()


def test_rtp_calls_are_set_up_and_every_packet_comes_back_timed(sip_server):
    if loadgen.compiler() is None:
        missing("no C compiler (cc) to build the load generator", "apt-get install gcc")
    progress: list[str] = []
    load = loadgen.Load(CALLS, "rtp", seconds=1.0, warmup=0.2, grace=2.0)
    result = loadgen.run(sip_server.port, load, progress.append)

    assert progress == [f"open {CALLS}", "measure", "measured"]
    assert result["mode"] == "rtp"
    assert (result["opened"], result["failed"], result["closed"]) == (CALLS, 0, 0)
    assert result["calls_opened"] == result["calls_ended"] == CALLS  # each hung up with a BYE
    assert result["expected"] == CALLS * 50  # 50 packets/s for 1 s
    assert result["sent"] == result["expected"]
    assert (result["corrupt"], result["dropped"], result["close_codes"]) == (0, 0, {})
    assert 0 < result["received"] <= result["sent"]
    if not sip_server.media.pace_output:  # paced, a starved stage may leave frames concealed
        assert result["received"] == result["expected"]
    rtt = result["rtt_ms"]
    assert 0 < rtt["p50"] <= rtt["p90"] <= rtt["p99"] <= rtt["p99.9"] <= rtt["max"]
    setup = result["setup_ms"]
    assert 0 < setup["p50"] <= setup["p99"] <= setup["max"]
    assert wait_until(lambda: not sip_server.calls and sip_server.runtime.pool.in_use == 0, 10)
    ends = [call.end_reason for call in list(sip_server.ended)[-CALLS:]]
    assert ends == ["the caller hung up"] * CALLS


def test_rtp_load_asks_for_sip_instead_of_a_websocket_path():
    argv = loadgen.Load(10, "rtp").argv(loadgen.BINARY, 5080)
    assert "--rtp" in argv and "--path" not in argv
    assert argv[argv.index("--port") + 1] == "5080"


def run(server: str, calls: int, p99: float | None, throughput: float = 1.0) -> dict:
    return {"server": server, "calls": calls, "rtt_ms": {"p99": p99}, "throughput": throughput,
            "server_cpus": None, "cores": 2}  # fmt: skip


def test_rtp_targets_compare_with_the_websocket_row_point_by_point():
    ws, rtp = report.FLOWCAT, report.FLOWCAT_RTP
    runs = [run(ws, 100, 2.0), run(rtp, 100, 1.5), run(ws, 300, 4.0), run(rtp, 300, 5.0)]
    (_, shown, met), (_, held, enough) = report.rtp_targets(runs)
    assert (met, shown) == (False, "higher at 300: 5.00 vs 4.00 ms")
    assert (held, enough) == ("300 calls (largest point run: 300)", True)

    runs = [run(ws, 100, 2.0), run(rtp, 100, 1.5, throughput=0.9)]
    assert report.rtp_targets(runs)[0][1:] == (
        "higher at 100: 1.50 vs 2.00 ms (throughput 0.9000)",
        False,
    )

    runs = [run(ws, 100, 2.0), run(rtp, 100, 1.5), run(rtp, 200, 30.0, 0.9)]
    (_, shown, met), (_, held, enough) = report.rtp_targets(runs)
    assert (met, shown) == (True, "100: 1.50 vs 2.00 ms")
    assert (held, enough) == ("100 calls (largest point run: 200)", None)
    assert report.rtp_targets([run(ws, 100, 2.0)])[0][2] is None  # no RTP row: not run


def test_ladders_stop_after_the_first_point_that_does_not_hold():
    measured: list[int] = []

    def measure(point: int) -> dict:
        measured.append(point)
        return {"rate": point, "ok": point < 100}

    runs = sip_bench.ladder([10, 50, 100, 200], measure, lambda r: r["ok"])
    assert measured == [10, 50, 100]
    assert sip_bench.best(runs, "rate") == 50
    assert sip_bench._verdict(50, runs, 50) is True
    assert sip_bench._verdict(50, runs, 80) is False  # stopped short of it
    assert sip_bench._verdict(50, runs[:2], 80) is None  # never tried that far


def test_a_rate_holds_only_if_every_call_succeeded_at_the_rate_asked():
    good = {"rate": 50, "calls": 500, "sipp_exit": 0, "successful": 500, "failed": 0,
            "completed_rate": 49.0}  # fmt: skip
    assert sip_bench.rate_held(good)
    assert not sip_bench.rate_held({**good, "completed_rate": 40.0})  # fell behind
    assert not sip_bench.rate_held({**good, "successful": 499, "failed": 1})
    assert not sip_bench.rate_held({**good, "sipp_exit": 1})


def test_sipp_files_are_read(tmp_path):
    stat = tmp_path / "stat.csv"
    stat.write_text(
        "TotalCallCreated;SuccessfulCall(C);FailedCall(C);FailedMaxUDPRetrans(C);"
        "FailedCallRejected(C);\n"
        "1;0;0;0;0;\n"
        "20;18;2;2;0;\n"
    )
    stats = sipp.final_stats(stat)
    assert (stats["TotalCallCreated"], stats["FailedCall(C)"]) == ("20", "2")
    assert sipp.failures(stats) == {"FailedMaxUDPRetrans": 2}
    rtt = tmp_path / "setup_1_rtt.csv"
    rtt.write_text("Date_ms;response_time_ms;rtd_no\n100.0;4;1\n300.0;6;1\n500.0;5;1\n")
    setups = sipp.setup_times(rtt)
    assert setups == [(100.0, 4.0), (300.0, 6.0), (500.0, 5.0)]
    assert sipp.completed_rate(setups) == 5.0  # 2 more answers in 0.4 s
    assert sipp.completed_rate(setups[:1]) is None


def test_sipp_sets_calls_up_at_a_rate(sip_server):
    need_program("sipp")
    result = sipp.run(sip_server.port, sipp.Rate(5, 1.0, hold=0.1))

    assert (result["calls"], result["successful"], result["failed"]) == (5, 5, 0)
    assert (result["sipp_exit"], result["failures"]) == (0, {})
    assert result["completed_rate"] is not None
    assert 0 <= result["setup_ms"]["p50"] <= result["setup_ms"]["p99"]
    assert wait_until(lambda: not sip_server.calls and sip_server.runtime.pool.in_use == 0, 10)


class Busy:
    """A server's CPU clock: ``busy_reads`` reads 1 s apart each, then idle."""

    def __init__(self, busy_reads: int) -> None:
        self.reads, self.busy_reads, self.cpu = 0, busy_reads, 0.0

    def cpu_seconds(self) -> float:
        self.reads += 1
        if self.reads <= self.busy_reads:
            self.cpu += 1.0
        return self.cpu


def test_a_point_of_calls_held_waits_for_the_calls_a_failed_rate_left_behind():
    assert servers.wait_quiet(Busy(4), seconds=0.01, limit=1.0) is not None
    assert servers.wait_quiet(Busy(10**6), seconds=0.01, limit=0.05) is None
    run = {"calls": 100, "opened": 100, "closed": 0, "received": 5, "expected": 5,
           "rtt_ms": {"p50": 1, "p99": 2, "max": 3}, "setup_ms": {"p99": 4},
           "server_cpu_cores": 0.1, "server_cpu_us_per_packet": 40, "held": True}  # fmt: skip
    assert [row[1] for row in sip_bench.held_rows([{**run, "drained_s": 3.0}])] == [3.0]
    assert [row[1] for row in sip_bench.held_rows([{**run, "drained_s": None}])] == ["busy"]


def test_a_run_with_the_server_split_as_asked_is_written_apart():
    assert sip_bench.shape_suffix(None, None) == ""
    assert sip_bench.shape_suffix(2, 1) == "-2loops-1threads"
