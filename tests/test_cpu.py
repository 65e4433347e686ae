"""CPU accounting by part: threads by their CPU clocks, child processes from /proc, the
rates per call, and the runtime's housekeeper keeping it up to date."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from helpers import wait_until

from flowcat_ft.cpu import CpuAccount, _program
from flowcat_ft.runtime import Runtime


def burn(seconds: float) -> None:
    """Use ``seconds`` of this thread's CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def part(snapshot: dict, name: str) -> dict:
    [found] = [p for p in snapshot["parts"] if p["name"] == name]
    return found


def test_a_threads_cpu_is_read_from_its_clock_and_named_by_its_kind():
    account = CpuAccount(lambda thread: "busy" if thread.name == "burner" else "other")
    account.sample(calls=4)
    burnt, done = threading.Event(), threading.Event()

    def burner() -> None:
        burn(0.2)
        burnt.set()
        done.wait()

    threads = [
        threading.Thread(target=burner, name="burner"),
        threading.Thread(target=done.wait, name="burner-twin"),
    ]
    for thread in threads:
        thread.start()
    try:
        assert burnt.wait(timeout=30)
        account.sample(calls=4)
        snapshot = account.snapshot()
    finally:
        done.set()
        for thread in threads:
            thread.join()

    busy = part(snapshot, "burner")
    assert busy["kind"] == "busy"
    assert busy["cpu_s"] >= 0.18  # its own clock: what it used, however busy the machine
    assert busy["cores"] > 0
    # cores are rounded to 1/1000: µs per call per s agree to that
    assert busy["us_per_call_s"] == pytest.approx(busy["cores"] * 1e6 / 4, abs=1e3 / 4)
    assert snapshot["calls"] == 4
    assert part(snapshot, "burner-twin")["cpu_s"] < 0.1
    assert snapshot["process"]["cpu_s"] >= busy["cpu_s"]
    assert snapshot["parts"][0]["cores"] >= snapshot["parts"][-1]["cores"]  # busiest first


def test_without_calls_there_is_no_cost_per_call():
    account = CpuAccount(lambda thread: "other")
    account.sample(calls=0)
    burn(0.02)
    account.sample(calls=0)
    snapshot = account.snapshot()
    assert snapshot["calls"] == 0
    assert all(p["us_per_call_s"] is None for p in snapshot["parts"])


def test_child_processes_are_parts_and_count_among_ended_workers_once_waited_for():
    account = CpuAccount(lambda thread: "other", discover_every=0.0)
    burner = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", burner + "\ninput()"], stdin=subprocess.PIPE)
    try:
        name = f"python (pid {child.pid})"

        def worker_used_it() -> bool:
            account.sample(calls=1)
            parts = account.snapshot()["parts"]
            return any(p["name"] == name and p["cpu_s"] >= 0.25 for p in parts)

        assert wait_until(worker_used_it, timeout=20)
        assert part(account.snapshot(), name)["kind"] == "worker"
    finally:
        child.communicate(b"\n", timeout=10)
    account.sample(calls=1)
    ended = part(account.snapshot(), "ended workers")
    assert ended["cpu_s"] >= 0.25
    assert all(p["name"] != name for p in account.snapshot()["parts"])


def test_worker_processes_are_named_after_what_they_run():
    assert _program(["/x/.venv-gil/bin/python", "/x/flowcat_ft/sphinx_worker.py"]) == (
        "sphinx_worker"
    )
    assert _program(["python3.13t", "-u", "-m", "flowcat_ft.transports.webrtc.companion"]) == (
        "companion"
    )
    assert _program(["/usr/bin/espeak-ng", "--stdout", "hello"]) == "espeak-ng"
    assert _program(["python", "-c", "pass"]) == "python"


def test_the_runtime_samples_its_stage_threads_while_calls_run():
    from flowcat_ft import FrameProcessor, Pipeline, TextFrame

    class Busy(FrameProcessor):
        def process(self, frame, direction):
            if isinstance(frame, TextFrame):
                burn(0.05)
            self.push(frame, direction)

    with Runtime(threads=1, housekeeping_interval=0.05) as runtime:
        call = runtime.open_call(Pipeline([Busy]))
        for _ in range(6):
            call.push(TextFrame("work"))

        def stage_busy() -> bool:
            parts = runtime.metrics()["cpu"]["parts"]
            stages = [p for p in parts if p["kind"] == "stage"]
            return bool(stages) and stages[0]["cpu_s"] >= 0.25

        assert wait_until(stage_busy, timeout=30)
        cpu = runtime.metrics()["cpu"]
        [stage] = [p for p in cpu["parts"] if p["kind"] == "stage"]
        assert stage["name"].startswith("flowcat-p")
        assert "flowcat-housekeeper" in {p["name"] for p in cpu["parts"]}
        call.close()
