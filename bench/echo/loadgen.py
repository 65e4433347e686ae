"""Build and run the native load generator, ``bench/loadgen/loadgen.c``.

The binary is built on the machine by :func:`build` (``cc -O2``, nothing prebuilt is
committed) into ``bench/loadgen/build/``, again whenever the source is newer. :func:`run`
runs it against a server on 127.0.0.1 and returns its JSON report; the progress lines it
writes on stderr (``open N``, ``measure``, ``measured``) are handed to a callback as they
come, so the caller can sample the server at the edges of the measured window.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench._common import ROOT
from bench.echo.cpus import pinned

SOURCE = ROOT / "bench" / "loadgen" / "loadgen.c"
BINARY = ROOT / "bench" / "loadgen" / "build" / "loadgen"

PATHS = {"raw": "/raw?codec=mulaw&sample_rate=8000", "twilio": "/twilio"}
"""The URL path a server under test serves each WebSocket message format on."""
MODES = (*PATHS, "rtp")
"""What a call sends: a WebSocket message format, or (``"rtp"``) a SIP call over UDP to the
same port number with PCMU RTP."""


def compiler() -> str | None:
    """The C compiler the load generator is built with, or None if there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


def build() -> Path:
    """Compile the load generator if it is missing or older than its source; its path.

    The binary is written under a temporary name and renamed, so concurrent builds (tests
    run in parallel) never see a half-written file.
    """
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build the load generator")
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=BINARY.parent, prefix=".loadgen-")
    os.close(fd)
    try:
        subprocess.run(
            [cc, "-O2", "-Wall", "-Wextra", "-o", tmp, str(SOURCE), "-lm"],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(tmp, BINARY)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"building {SOURCE.name} failed:\n{error.stderr}") from error
    finally:
        Path(tmp).unlink(missing_ok=True)
    return BINARY


@dataclass(frozen=True)
class Load:
    """One run of the load generator: ``calls`` connections sending ``mode`` messages
    (``"raw"`` binary µ-law or ``"twilio"`` JSON; ``"rtp"``: SIP calls, with RTP over UDP
    on the same port number), opened over ``ramp`` s, then ``warmup``
    s of traffic, then ``seconds`` s measured, then up to ``grace`` s for the last echoes.
    ``idle``: each call sends one frame, then the connections are held for ``seconds``.
    ``churn``: calls last a log-normal length with this median (s), each slot dialling a
    new call when its call has ended; ``report``: a JSON line per this many seconds of the
    window (0: none); see ``loadgen.c``. ``cpus``: the CPUs the load generator runs on
    (None: any)."""

    calls: int
    mode: str = "raw"
    seconds: float = 10.0
    warmup: float = 2.0
    grace: float = 2.0
    idle: bool = False
    churn: float = 0.0
    report: float = 0.0
    cpus: tuple[int, ...] | None = None

    @property
    def ramp(self) -> float:
        """Connections open at 500 per second, SIP calls at 200 (well below the set-up
        rate ``bench.sip`` measures), spread evenly."""
        return max(0.2, self.calls / (200 if self.mode == "rtp" else 500))

    def argv(self, binary: Path, port: int) -> list[str]:
        argv = [str(binary), "--port", str(port)]
        argv += ["--rtp"] if self.mode == "rtp" else ["--path", PATHS[self.mode]]
        argv += ["--calls", str(self.calls), "--ramp", f"{self.ramp:g}"]
        argv += ["--warmup", f"{self.warmup:g}", "--seconds", f"{self.seconds:g}"]
        argv += ["--grace", f"{self.grace:g}"]
        if self.mode == "twilio":
            argv.append("--twilio")
        if self.idle:
            argv.append("--idle")
        if self.churn:
            argv += ["--churn", f"{self.churn:g}"]
        if self.report:
            argv += ["--report", f"{self.report:g}"]
        return argv

    @property
    def longest(self) -> float:
        """Seconds the load generator may take at most (it gives up 30 s past its plan)."""
        return self.ramp + self.warmup + self.seconds + self.grace + 35


class Plan(Protocol):
    """What :func:`run` runs: a :class:`Load`, or the agent benchmark's conversations."""

    cpus: tuple[int, ...] | None

    @property
    def longest(self) -> float: ...

    def argv(self, binary: Path, port: int) -> list[str]: ...


def run(
    port: int,
    load: Plan,
    on_progress: Callable[[str], None] | None = None,
    on_interval: Callable[[dict[str, object]], None] | None = None,
) -> dict[str, object]:
    """Run ``load`` against 127.0.0.1:``port``; return the load generator's JSON report.

    ``on_progress`` gets each progress line as it comes, on this thread; ``on_interval``
    each interval's report (``Load.report``), on another thread, as it comes.
    """
    binary = build()
    with pinned(load.cpus):
        proc = subprocess.Popen(
            load.argv(binary, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    watchdog = threading.Timer(load.longest + 10, proc.kill)
    watchdog.start()
    lines: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_interval is not None and line.startswith('{"interval"'):
                on_interval(json.loads(line))

    reader = threading.Thread(target=read_stdout, name="loadgen-stdout", daemon=True)
    reader.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if on_progress is not None:
                on_progress(line.strip())
        code = proc.wait()
        reader.join()
    finally:
        watchdog.cancel()
    last = lines[-1].strip() if lines else ""
    if code != 0 or not last.startswith("{"):
        raise RuntimeError(f"the load generator failed (exit {code}): {''.join(lines)}")
    return json.loads(last)
