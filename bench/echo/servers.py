"""The servers under test: what runs each, on which interpreter, and a handle on a running
one that reads its CPU time, memory and each thread's CPU and context switches from
``/proc``.

Each server runs as a subprocess of the kit, from the repo root, on a free port of
127.0.0.1; it is ready once it prints a line starting with ``ready`` (see
:mod:`bench.echo._serving`). The pipecat venv is made here on first use.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import ROOT, cores, python_of
from bench.echo.cpus import pinned

PIPECAT_VENV = ROOT / ".venv-pipecat"
PIPECAT_REQUIREMENT = "pipecat-ai[websocket]==1.14.*"
PIPECAT_EXTRAS = ("uvicorn",)
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """How to start one server under test: ``python -m module --port P *args``."""

    name: str
    python: Path
    module: str
    args: tuple[str, ...] = ()
    description: str = ""

    def command(self, port: int) -> list[str]:
        return [str(self.python), "-m", self.module, "--port", str(port), *self.args]


def flowcat(
    build: str, loops: int | None = None, threads: int | None = None, sip: str | None = None
) -> Server:
    """flowcat-ft's echo server on the ``"ft"`` or ``"gil"`` venv (default: the server's
    own split of the cores between event-loop and stage threads); ``sip``: it also answers
    SIP calls with RTP of this shape (``"unpaced"`` or ``"paced"``, see
    :mod:`bench.echo.flowcat_server`)."""
    args: tuple[str, ...] = ("--sip", sip) if sip else ()
    if loops is not None:
        args += ("--loops", str(loops))
    if threads is not None:
        args += ("--threads", str(threads))
    label = "3.13t" if build == "ft" else "GIL"
    if loops is None and threads is None:
        shape = "the server's split of the cores"
    else:
        shape = f"{loops or 'default'} loops, {threads or 'default'} stage threads"
    also = f", SIP with {sip} RTP" if sip else ""
    return Server(
        f"flowcat-ft {label}" + (f" {sip} RTP" if sip == "paced" else ""),
        python_of(build),
        "bench.echo.flowcat_server",
        args,
        f"flowcat-ft 7-processor echo pipeline on {label} ({shape}{also})",
    )


def floor(loops: int) -> Server:
    return Server(
        "floor 3.13t",
        python_of("ft"),
        "bench.echo.floor_server",
        ("--loops", str(loops)),
        f"bare websockets echo, µ-law decode and encode only, on 3.13t ({loops} loops)",
    )


def pipecat(shape: str, workers: int | None = None) -> Server:
    """pipecat's ``shape`` of echo server on ``workers`` processes (default: one per core)."""
    workers = workers or cores()
    name = {"websockets": "pipecat websockets", "fastapi": "pipecat FastAPI"}[shape]
    what = {
        "websockets": "websockets + a PipelineWorker per call, 7 processors",
        "fastapi": "FastAPIWebsocketTransport + TwilioFrameSerializer, 7 processors",
    }[shape]
    return Server(
        name,
        PIPECAT_VENV / "bin" / "python",
        "bench.echo.pipecat_server",
        ("--shape", shape, "--workers", str(workers)),
        f"pipecat 1.14 on GIL CPython, {workers} worker processes: {what}",
    )


# -- the pipecat venv ------------------------------------------------------------------------


def pipecat_version() -> str | None:
    """pipecat's version in ``.venv-pipecat``, or None if it is not there."""
    python = PIPECAT_VENV / "bin" / "python"
    if not python.exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('pipecat-ai'))"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_pipecat_venv() -> str:
    """Make ``.venv-pipecat`` (GIL CPython from ``ci/interpreters.sh``, pipecat-ai 1.14
    pinned) unless it already holds pipecat 1.14; returns pipecat's version."""
    version = pipecat_version()
    if version is not None and version.startswith("1.14."):
        return version
    print(f"making {PIPECAT_VENV.name} with {PIPECAT_REQUIREMENT} (once)", flush=True)
    found = subprocess.run(
        ["bash", "ci/interpreters.sh"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assignments = dict(word.split("=", 1) for word in shlex.split(found.stdout) if "=" in word)
    gil_python = assignments["FLOWCAT_PYTHON_GIL"]
    subprocess.run([gil_python, "-m", "venv", "--clear", PIPECAT_VENV], check=True)
    pip = [PIPECAT_VENV / "bin" / "python", "-m", "pip", "install", "-q"]
    subprocess.run([*pip, PIPECAT_REQUIREMENT, *PIPECAT_EXTRAS], check=True)
    version = pipecat_version()
    if version is None:
        raise RuntimeError(f"pipecat did not install into {PIPECAT_VENV}")
    return version


# -- a running server ----------------------------------------------------------------------


def free_port() -> int:
    """A port number of 127.0.0.1 that nothing uses now, over TCP or UDP (a server under
    test may answer SIP over UDP on its TCP port's number)."""
    while True:
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue  # an RTP or SIP socket of another test has it
            return port


def _stat(path: str) -> tuple[str, list[str]]:
    """The command name in ``PATH/stat`` (``PATH``: ``/proc/PID`` or ``/proc/PID/task/TID``)
    and the fields after it (state is field 0)."""
    with open(f"{path}/stat") as f:
        head, _, tail = f.read().rpartition(")")
    return head.partition("(")[2], tail.split()


def _cpu(fields: list[str]) -> float:
    """utime + stime, in seconds, from :func:`_stat`'s fields."""
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass(frozen=True)
class Usage:
    """CPU seconds and context switches of one or more threads: voluntary (the thread
    waited) and nonvoluntary (it was preempted)."""

    cpu: float = 0.0
    voluntary: int = 0
    nonvoluntary: int = 0
    threads: int = 1

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu + other.cpu,
            self.voluntary + other.voluntary,
            self.nonvoluntary + other.nonvoluntary,
            self.threads + other.threads,
        )

    def __sub__(self, earlier: Usage) -> Usage:
        return Usage(
            self.cpu - earlier.cpu,
            self.voluntary - earlier.voluntary,
            self.nonvoluntary - earlier.nonvoluntary,
            self.threads,
        )


def thread_usage(pid: int, tid: int) -> tuple[str, Usage]:
    """A thread's name (its ``comm``) and what it has used since it started."""
    task = f"/proc/{pid}/task/{tid}"
    name, fields = _stat(task)
    with open(f"{task}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    voluntary = int(status["voluntary_ctxt_switches"])
    nonvoluntary = int(status["nonvoluntary_ctxt_switches"])
    return name, Usage(_cpu(fields), voluntary, nonvoluntary)


def threads_of(pids: list[int]) -> dict[int, tuple[str, Usage]]:
    """Every thread of the processes ``pids``, by thread id: its name and usage so far."""
    found = {}
    for pid in pids:
        try:
            tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue  # gone
        for tid in tids:
            try:
                found[tid] = thread_usage(pid, tid)
            except OSError:
                continue  # gone meanwhile
    return found


def used_by_name(
    before: dict[int, tuple[str, Usage]], after: dict[int, tuple[str, Usage]]
) -> dict[str, Usage]:
    """What the threads used between two readings of :func:`threads_of`, added up by name
    (threads that share one, such as pipecat's worker processes, are summed). A thread
    started in between counts from zero; one that ended in between is missing."""
    used: dict[str, Usage] = {}
    for tid, (name, now) in after.items():
        since = now - before[tid][1] if tid in before else now
        used[name] = used[name] + since if name in used else since
    return used


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_stat(f"/proc/{entry}")[1][1])
            except (OSError, IndexError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


class Running:
    """A server under test, started on a free port (on ``cpus`` if given: all its threads
    and processes); a context manager that stops it.

    Starting returns at once (so several servers can start side by side); :meth:`wait_ready`
    waits for the ``ready`` line. The server's stderr goes to ``log``.
    ``cpu_seconds()`` and ``rss_bytes()`` add up the server's whole process tree (pipecat
    runs one worker process per core), read from ``/proc``; ``threads()`` reads each of
    its threads.
    """

    def __init__(self, server: Server, log: Path, cpus: tuple[int, ...] | None = None) -> None:
        self.server = server
        self.log = log
        self.port = free_port()
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as err, pinned(cpus):
            self.proc = subprocess.Popen(
                server.command(self.port), cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.pids = [self.proc.pid]

    def wait_ready(self, timeout: float = 120.0) -> str:
        """The server's ``ready ...`` line; raises if it exits or is silent too long."""
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                line = line.strip()  # flowcat-ft serve indents its steps
                if line.startswith("ready"):
                    self.pids = descendants(self.proc.pid)
                    # Keep draining stdout, or a chatty server would block on it.
                    threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                    return line
        finally:
            timer.cancel()
        self.proc.wait()
        raise RuntimeError(
            f"{self.server.name} did not start (exit {self.proc.returncode}); see {self.log}"
        )

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                total += _cpu(_stat(f"/proc/{pid}")[1])
            except OSError:
                continue
        return total

    def threads(self) -> dict[int, tuple[str, Usage]]:
        """Every thread of the server's processes: see :func:`threads_of`."""
        return threads_of(self.pids)

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * PAGE
            except OSError:
                continue
        return total

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL (to the whole tree) if it has not exited in ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in self.pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / TICK, sum(values) / TICK


def wait_quiet(running: Running, seconds: float = 1.0, limit: float = 10.0) -> float | None:
    """Let a server drain what a previous run left it (until it uses under 5% of a core
    for ``seconds``, ``limit`` s at most). Returns the seconds it waited, or None if the
    server was still busy at the limit."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = running.cpu_seconds()
        time.sleep(seconds)
        if running.cpu_seconds() - before < 0.05 * seconds:
            return round(time.monotonic() - start, 1)
    return None
