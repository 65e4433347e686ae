"""The agent benchmark works: its load generator holds phone conversations with a real
``flowcat-ft serve`` (the default offline agent, in a subprocess) and records each reply
and the agent ending the call; and its arithmetic, on records made by hand."""

from __future__ import annotations

import pytest

from bench._common import build
from bench.agent import providers as fakes
from bench.agent import report
from bench.agent.conversation import Conversations, Voices
from bench.agent.measure import OFFLINE_CONFIG, agent_server, measure
from bench.echo import loadgen
from bench.echo.servers import Running

FIELDS = [
    "call", "kind", "clip", "over", "start_ms", "end_ms", "reply_ms", "audible_frames",
    "frames", "max_lag_ms", "max_gap_ms", "overlapped", "clear_ms",
]  # fmt: skip


def loadgen_result(utterances: list[list], call_ends: list[list]) -> dict:
    """A conversation report as the load generator writes it, window 1 s to 9 s."""
    return {
        "calls": len(call_ends),
        "opened": len(call_ends),
        "failed": 0,
        "window_ms": [1000.0, 9000.0],
        "utterance_fields": FIELDS,
        "utterances": utterances,
        "call_fields": ["call", "opened", "ended_ms", "end_code"],
        "call_ends": call_ends,
        "loadgen_cpu_percent": 3.0,
    }


def test_replies_are_timed_from_the_end_of_each_question_in_the_window():
    result = loadgen_result(
        [
            # call, kind, clip, over, start, end, reply, audible, frames, lag, gap, overlapped,
            # clear
            [0, "greeting", -1, 0, 10, 10, 310, 150, 160, 0, 30, 0, None],
            [0, "question", 0, 0, 500, 900, 1500, 100, 110, 0, 25, 0, None],  # before the window
            [0, "question", 0, 0, 1000, 2000, 2600, 100, 110, 0, 25, 0, None],
            [0, "question", 1, 0, 3000, 4000, 4800, 50, 60, 45, 90, 0, None],  # an underrun
            [0, "question", 0, 0, 5000, 6000, None, 0, 0, 0, 0, 0, None],  # no reply
            [0, "question", 0, 0, 7000, 8000, 9000, 60, 70, 0, 30, 0, None],  # cut short
            [0, "goodbye", -1, 0, 12000, 12500, 13000, 40, 50, 0, 30, 0, None],
            [1, "greeting", -1, 0, 20, 20, None, 0, 0, 0, 0, 0, None],
            [1, "question", 0, 0, 1500, 2500, 2500.5, 100, 100, 0, 20, 1, None],  # overlapped
        ],
        [[0, 1, 15000, 1000], [1, 1, 3000, 1011]],
    )
    s = report.summarize(result)

    assert (s["questions"], s["replied"], s["no_reply"], s["overlapped"]) == (5, 3, 1, 1)
    assert s["reply_latency_ms"] == {"p50": 800.0, "p95": 1000.0, "p99": 1000.0, "max": 1000.0}
    assert s["audible_s"]["p50"] == 1.2  # 60 frames of 20 ms
    assert s["cut_short"] == 1  # 60 frames against a median of 80 for clip 0
    assert s["underruns"] == 1 and s["max_lag_ms"]["max"] == 45.0
    assert s["max_gap_ms"]["max"] == 90.0
    assert s["greeting_ms"]["p50"] == 300.0 and s["greetings_missing"] == 1
    assert (s["goodbyes"], s["ended_by_agent"], s["dropped"]) == (1, 1, 1)
    assert s["hang_up_ms"]["p50"] == 2500.0
    assert s["barge_ins"] == 0


def test_a_barge_in_is_acted_on_when_a_clear_comes_and_the_agent_ends_the_call():
    result = loadgen_result(
        [
            [0, "question", 0, 0, 1000, 2000, 2700, 60, 70, 0, 30, 0, None],  # barged: not short
            [0, "goodbye", -1, 1, 3300, 3800, 4300, 40, 50, 0, 30, 1, 3550],
            [1, "question", 0, 0, 1200, 2200, 2900, 150, 160, 0, 30, 0, None],
            [1, "goodbye", -1, 1, 3400, 3900, 4400, 40, 50, 0, 30, 1, None],  # not heard
            [2, "question", 0, 0, 1300, 2300, 3000, 150, 160, 0, 30, 0, None],
            [2, "goodbye", -1, 0, 6300, 6800, 7300, 40, 50, 0, 30, 0, None],
        ],
        [[0, 1, 5000, 1000], [1, 1, None, 0], [2, 1, 8000, 1000]],
    )
    s = report.summarize(result)

    assert (s["barge_ins"], s["barge_ins_acted_on"]) == (2, 1)
    assert s["clear_ms"]["p50"] == 250.0
    assert s["cut_short"] == 0
    assert (s["goodbyes"], s["ended_by_agent"], s["dropped"]) == (3, 2, 0)


def test_cpu_by_part_is_per_call_per_second_over_the_window():
    before = {
        "process": {"cpu_s": 10.0},
        "parts": [
            {"name": "flowcat-p0.0-s0", "kind": "stage", "cpu_s": 4.0},
            {"name": "sphinx_worker (pid 7)", "kind": "worker", "cpu_s": 1.0},
        ],
    }
    after = {
        "process": {"cpu_s": 12.0},
        "parts": [
            {"name": "flowcat-p0.0-s0", "kind": "stage", "cpu_s": 5.0},
            {"name": "sphinx_worker (pid 7)", "kind": "worker", "cpu_s": 1.4},
            {"name": "sphinx_worker (pid 9)", "kind": "worker", "cpu_s": 0.2},  # new
        ],
    }
    parts = report.cpu_by_part(before, after, seconds=2.0, calls=4)
    assert [(p["name"], p["cores"], p["us_per_call_s"]) for p in parts] == [
        ("flowcat-p0.0-s0", 0.5, 125_000),
        ("sphinx_worker (pid 7)", 0.2, 50_000),
        ("sphinx_worker (pid 9)", 0.1, 25_000),
    ]
    totals = report.cpu_totals(before, after, parts, seconds=2.0, calls=4)
    assert totals["process_cores"] == 1.0 and totals["process_us_per_call_s"] == 250_000
    assert totals["workers_cores"] == pytest.approx(0.3)
    assert totals["server_us_per_call_s"] == 325_000


@pytest.mark.xdist_group("realtime")
def test_conversations_with_the_offline_agent_record_replies_and_calls_it_ended(tmp_path):
    assert loadgen.compiler() is not None, "no C compiler (cc) to build the load generator"
    voices = Voices.make(tmp_path, questions=("what is the time",))  # a short reply
    # The greeting (about 4 s; the first question comes at the latest 10 s after the call
    # opens), a question or two in the window, then goodbye; the agent hangs up.
    load = Conversations(2, voices, seconds=12.0, warmup=1.0, period=5.0)
    with Running(agent_server(build(), OFFLINE_CONFIG), tmp_path / "server.log") as running:
        running.wait_ready()
        run = measure(running, load, build())

    s = run["summary"]
    assert (s["opened"], s["failed"]) == (2, 0)
    assert s["greetings_missing"] == 0
    assert s["questions"] >= 1 and s["replied"] >= 1
    assert 0 < s["reply_latency_ms"]["p50"] < 10_000
    assert s["audible_s"]["p50"] > 0.5  # "It is ..."
    assert (s["goodbyes"], s["ended_by_agent"], s["dropped"]) == (2, 2, 0)
    stages = [p for p in run["parts"] if p["kind"] == "stage"]
    assert stages and stages[0]["us_per_call_s"] > 0
    assert any(p["kind"] == "worker" for p in run["parts"])  # PocketSphinx's


def test_conversations_with_the_cloud_agent_on_the_fake_providers(tmp_path):
    assert loadgen.compiler() is not None, "no C compiler (cc) to build the load generator"
    voices = Voices.make(tmp_path, questions=("what is the time",))
    providers = fakes.start()
    try:
        config = fakes.agent_config(providers, tmp_path / "cloud.yaml")
        load = Conversations(2, voices, seconds=12.0, warmup=1.0, period=6.0, greeting_timeout=1.0)
        with Running(agent_server(build(), config), tmp_path / "server.log") as running:
            running.wait_ready()
            run = measure(running, load, build())
        times = providers.report()
    finally:
        providers.stop()

    s = run["summary"]
    assert (s["opened"], s["failed"]) == (2, 0)
    assert s["questions"] >= 2 and s["replied"] == s["questions"]
    assert 0 < s["reply_latency_ms"]["p50"] < 10_000
    assert s["audible_s"]["p50"] > 1.0  # the fake TTS's reply: 0.3 s a word, 11 words
    # The fake STT hears the short utterance as "goodbye"; the model calls end_call.
    assert (s["goodbyes"], s["ended_by_agent"], s["dropped"]) == (2, 2, 0)
    assert times["llm_first_token_s"]["count"] >= s["replied"]
    assert times["tts_first_audio_s"]["count"] >= s["replied"]


def test_the_runtime_s_share_is_the_reply_latency_over_the_floor():
    def step(p50_ms: float) -> dict:
        return {"what": "", "count": 4, "p50": p50_ms, "p95": p50_ms, "max": p50_ms}

    providers = {
        "stt_final_s": step(400.0),
        "llm_first_token_s": step(400.0),
        "llm_last_token_s": step(740.0),
        "tts_first_audio_s": step(120.0),
    }
    # The turn ends at the turn timeout (the STT's final came first), or at the final.
    assert report.floor_ms(providers, 0.8) == 800 + 740 + 120
    assert report.floor_ms(providers, 0.2) == 400 + 740 + 120

    def run(calls: int, p50: float, p99: float) -> dict:
        latency = {"p50": p50, "p95": p99, "p99": p99, "max": p99}
        return {"python": "3.13t", "calls": calls, "summary": {"reply_latency_ms": latency}}

    runs = [run(1, 1690, 1700), run(200, 1700, 1740)]
    assert report.share_rows(runs, 1660) == [
        ("3.13t", 1, "1660", "1690", "1700", "30", "40"),
        ("3.13t", 200, "1660", "1700", "1740", "40", "80"),
    ]
    [verdict] = report.share_target(runs, 1660)  # judged at 200 calls only
    assert verdict.endswith("adds 80 ms to the p99 (target ≤ 50 ms): **missed**")
