"""CPU time by part of the process: each thread, and each worker process it started.

Where a server's CPU goes decides what to optimise and how many calls a core carries, so
the runtime's housekeeper samples it (a few hundred µs every housekeeping tick, never on
the hot path) and :meth:`CpuAccount.snapshot` reports it, as the status page does:

- a thread Python knows (stage threads, event loops, the housekeeper...) by its CPU clock,
  ``time.clock_gettime(time.pthread_getcpuclockid(ident))``, exact to the nanosecond;
- a native thread (onnxruntime's or OpenBLAS's pools) by ``/proc/self/task/TID/stat``
  (utime + stime, in clock ticks), all of them as one part;
- a child process (a PocketSphinx worker, a WebRTC companion) by ``/proc/PID/stat``, all
  its threads; children are looked for every ``discover_every`` seconds (a scan of
  ``/proc``, some 3 ms), and named after their command line;
- children that ended and were waited for (espeak-ng runs, a worker that died) by
  ``os.times()``: their CPU moves into this process's ``children_*`` times.

Each part reports its CPU seconds so far, and over the last ``window`` seconds the cores
it used and the µs of CPU it spent per call per second (the cores it used divided by the
calls running; None without calls): the figure that says how many calls a core carries.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CpuAccount", "Part"]

TICK = os.sysconf("SC_CLK_TCK")

ThreadKind = Callable[[threading.Thread], str]
"""Names the kind of part a Python thread is (``"stage"``, ``"event loop"``...)."""


@dataclass(frozen=True, slots=True)
class Part:
    """One part of the process, as read at one sample: its name, its kind (``"stage"``,
    ``"event loop"``, ``"other"``, ``"native"``, ``"worker"``, ``"ended workers"``) and
    the CPU seconds it has used so far."""

    name: str
    kind: str
    cpu_s: float


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    calls: int
    process_s: float
    parts: dict[str, Part]


class CpuAccount:
    """Samples the CPU time of this process's parts; see the module docstring.

    ``kind_of`` names a Python thread's kind. ``window`` is how far back the rates in
    :meth:`snapshot` look.

    Threading contract: :meth:`sample` runs on one thread (the runtime's housekeeper) and
    publishes the samples in the window by assigning a new tuple of immutable samples to
    ``_samples``; :meth:`snapshot` may run on any thread and reads that attribute once
    (an attribute load is atomic on 3.13t as on the GIL build), so it never sees a
    sample half-made nor a collection being changed (copying a deque while another
    thread changes it raises on 3.13t). ``_children`` is used by the sampling thread only.
    """

    def __init__(
        self, kind_of: ThreadKind, window: float = 5.0, discover_every: float = 10.0
    ) -> None:
        self.kind_of = kind_of
        self.window = window
        self.discover_every = discover_every
        self._samples: tuple[_Sample, ...] = ()
        self._children: dict[int, str] = {}  # pid: name
        self._discovered_at = -float("inf")

    def sample(self, calls: int) -> None:
        """Read every part's CPU time now; ``calls``: the calls running now."""
        now = time.monotonic()
        if now - self._discovered_at >= self.discover_every:
            self._children = _children(os.getpid())
            self._discovered_at = now
        parts: dict[str, Part] = {}
        for part in self._threads() + self._workers():
            known = parts.get(part.name)
            if known is not None:  # parts that share a name are added up
                part = Part(part.name, part.kind, known.cpu_s + part.cpu_s)
            parts[part.name] = part
        times = os.times()
        ended = times.children_user + times.children_system
        parts["ended workers"] = Part("ended workers", "ended workers", ended)
        samples = (*self._samples, _Sample(now, calls, time.process_time(), parts))
        while len(samples) > 2 and now - samples[1].at >= self.window:
            samples = samples[1:]
        self._samples = samples

    def _threads(self) -> list[Part]:
        parts, known = [], set()
        for thread in threading.enumerate():
            if thread.ident is None or thread.native_id is None:
                continue
            try:
                clock = time.pthread_getcpuclockid(thread.ident)
                cpu = time.clock_gettime(clock)
            except OSError:  # it ended meanwhile
                continue
            known.add(thread.native_id)
            parts.append(Part(thread.name, self.kind_of(thread), cpu))
        native = 0.0
        for tid in _listdir("/proc/self/task"):
            if int(tid) not in known:
                native += _stat_cpu(f"/proc/self/task/{tid}/stat")
        parts.append(Part("native threads", "native", native))
        return parts

    def _workers(self) -> list[Part]:
        parts = []
        for pid, name in list(self._children.items()):
            cpu = _stat_cpu(f"/proc/{pid}/stat")
            if cpu < 0:  # gone: once waited for, it counts among the ended workers
                del self._children[pid]
                continue
            parts.append(Part(name, "worker", cpu))
        return parts

    def snapshot(self) -> dict[str, object]:
        """The parts, busiest first: CPU seconds so far (``cpu_s``); over the last
        ``window`` seconds, ``cores`` and ``us_per_call_s`` (µs of CPU per call per
        second; None without calls). Also the whole process's (``process``, children not
        included) and the calls running (``calls``: their mean over the window)."""
        samples = self._samples
        if not samples:
            return {"window_s": 0.0, "calls": 0, "process": None, "parts": []}
        first, last = samples[0], samples[-1]
        seconds = last.at - first.at
        calls = sum(s.calls for s in samples) / len(samples)

        def rates(cpu_s: float, before: float) -> dict[str, float | None]:
            if seconds <= 0:
                return {"cores": None, "us_per_call_s": None}
            cores = max(0.0, cpu_s - before) / seconds
            per_call = round(cores * 1e6 / calls) if calls else None
            return {"cores": round(cores, 3), "us_per_call_s": per_call}

        parts = [
            {
                "name": part.name,
                "kind": part.kind,
                "cpu_s": round(part.cpu_s, 3),
                **rates(part.cpu_s, first.parts[name].cpu_s if name in first.parts else 0.0),
            }
            for name, part in last.parts.items()
        ]
        parts.sort(key=lambda p: (-(p["cores"] or 0.0), -p["cpu_s"]))
        process = {"cpu_s": round(last.process_s, 3), **rates(last.process_s, first.process_s)}
        return {
            "window_s": round(seconds, 2),
            "calls": round(calls, 1),
            "process": process,
            "parts": parts,
        }


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _stat_cpu(path: str) -> float:
    """utime + stime, in seconds, from a ``/proc/.../stat`` file; -1 if it is gone."""
    try:
        with open(path) as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` now, each named after its command line."""
    found = {}
    for entry in _listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rpartition(")")[2].split()[1])
            if parent != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [arg.decode(errors="replace") for arg in f.read().split(b"\0") if arg]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        found[int(entry)] = f"{_program(argv)} (pid {entry})"
    return found


def _program(argv: list[str]) -> str:
    """What a command line runs: for python, the module of ``-m MODULE`` or the script's
    name; else the program's name."""
    program = os.path.basename(argv[0]) if argv else "?"
    if not program.startswith("python"):
        return program
    for k, arg in enumerate(argv[1:], 1):
        if arg == "-m" and k + 1 < len(argv):
            return argv[k + 1].rpartition(".")[2]
        if arg == "-c":
            return program
        if not arg.startswith("-"):
            return os.path.basename(arg).removesuffix(".py")
    return program
