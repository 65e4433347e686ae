"""The echo benchmark kit's own measuring: each thread's CPU and context switches read from
``/proc``, the servers' threads named in the OS, and CPU lists and pinning."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import pytest

from bench._common import ROOT
from bench.echo import cpus, servers
from bench.echo.servers import Usage


def test_a_threads_usage_and_name_are_read_from_proc():
    spun, done = threading.Event(), threading.Event()

    def work() -> None:
        # A name with the characters that could trip /proc/PID/task/TID/stat's parsing.
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write("a) b (c")
        time.sleep(0.001)  # waits: one voluntary context switch at least
        while time.thread_time() < 0.05:
            pass
        spun.set()
        done.wait()

    thread = threading.Thread(target=work)
    thread.start()
    try:
        spun.wait()
        name, used = servers.threads_of([os.getpid()])[thread.native_id]
    finally:
        done.set()
        thread.join()

    assert name == "a) b (c"
    assert used.cpu >= 0.04
    assert used.voluntary >= 1


def test_usage_between_readings_is_added_up_by_name():
    before = {1: ("loop", Usage(1.0, 10, 1)), 2: ("loop", Usage(2.0, 20, 2))}
    after = {
        1: ("loop", Usage(1.5, 15, 1)),
        2: ("loop", Usage(2.25, 30, 4)),
        3: ("stage", Usage(0.5, 7, 0)),  # started in between: counts from zero
    }

    assert servers.used_by_name(before, after) == {
        "loop": Usage(0.75, 15, 2, threads=2),
        "stage": Usage(0.5, 7, 0),
    }


def test_servers_name_their_threads_in_the_os():
    code = (
        "import threading\n"
        "from bench.echo._serving import name_threads\n"
        "def comm():\n"
        "    return open(f'/proc/self/task/{threading.get_native_id()}/comm').read().strip()\n"
        "name_threads('main-test')\n"
        "t = threading.Thread(target=lambda: print(comm()), name='a-long-thread-name')\n"
        "t.start(); t.join(); print(comm())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert done.stdout.split() == ["a-long-thread-n", "main-test"]  # the kernel keeps 15


def test_a_process_started_pinned_keeps_its_threads_on_the_cpus():
    cpu = cpus.available()[-1]
    before = os.sched_getaffinity(0)
    code = (
        "import os, threading\n"
        "t = threading.Thread(target=lambda: print(sorted(os.sched_getaffinity(0))))\n"
        "t.start(); t.join()\n"
    )
    with cpus.pinned((cpu,)):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate()

    assert out.strip() == f"[{cpu}]"
    assert os.sched_getaffinity(0) == before


def test_cpu_lists_read_and_write_as_taskset_does():
    assert cpus.parse_list("0-2,5") == (0, 1, 2, 5)
    assert cpus.text((0, 1, 2, 5)) == "0-2,5"
    first = cpus.available()[0]
    assert cpus.parse_setup(f"{first}:{first}") == cpus.Setup((first,), (first,))
    for bad in ("", "x", ":0", "2-1", "100000"):
        with pytest.raises(argparse.ArgumentTypeError):
            cpus.parse_setup(bad)


def test_the_scaling_ladder_stops_at_the_cpus_there_are():
    available = cpus.available()
    setups = cpus.ladder([1, 2, len(available) + 1])

    assert [s.cores for s in setups] == [n for n in (1, 2) if n <= len(available)]
    for setup in setups:
        assert setup.server == available[: setup.cores]
        assert setup.loadgen == (available[-1:] if setup.cores < len(available) else None)
