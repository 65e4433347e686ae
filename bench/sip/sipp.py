"""Run SIPp (Debian's ``sip-tester``, installed by ``ci/system-packages.sh``) as the caller
of the set-up rate benchmark, and read what it measured.

One :class:`Rate` is one SIPp run of ``setup.xml``: new calls at a fixed rate, each an
INVITE answered 200 OK, an ACK, the call held for ``hold`` seconds, a BYE. SIPp traces the
time from each INVITE to its 200 OK (``-trace_rtt``: response time 1, one line per call)
and its counters at the end (``-trace_stat``: calls created, successful, failed and why).
SIPp runs in a temporary folder, where it writes those files.
"""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import percentiles
from bench.echo.servers import free_port

SCENARIO = Path(__file__).with_name("setup.xml")
RECV_TIMEOUT_MS = 5000
"""A call whose next message has not come in this long failed."""


def binary() -> str | None:
    """SIPp's path, or None if it is not installed."""
    return shutil.which("sipp")


def version() -> str:
    """SIPp's version (``v3.6.1``), or ``?``."""
    done = subprocess.run([binary() or "sipp", "-v"], capture_output=True, text=True, check=False)
    words = (done.stdout + done.stderr).split()
    return next((w.strip(".,-") for w in words if w[:1] == "v" and w[1:2].isdigit()), "?")


@dataclass(frozen=True)
class Rate:
    """``rate`` new calls per second for ``seconds`` s, each held ``hold`` s."""

    rate: int
    seconds: float
    hold: float = 0.5

    @property
    def calls(self) -> int:
        return max(1, round(self.rate * self.seconds))

    @property
    def longest(self) -> float:
        """Seconds SIPp may take at most before it is stopped (and the run failed)."""
        return self.seconds + self.hold + 3 * RECV_TIMEOUT_MS / 1000 + 10

    def argv(self, sipp: str, port: int) -> list[str]:
        return [
            sipp, f"127.0.0.1:{port}", "-sf", str(SCENARIO), "-i", "127.0.0.1",
            "-p", str(free_port()), "-mp", str(free_port()), "-t", "u1",
            "-r", str(self.rate), "-m", str(self.calls), "-d", str(round(self.hold * 1000)),
            "-recv_timeout", str(RECV_TIMEOUT_MS), "-timeout", f"{round(self.longest)}s",
            "-timeout_error", "-nostdin", "-trace_stat", "-stf", "stat.csv", "-fd", "1",
            "-trace_rtt", "-rtt_freq", "1",
        ]  # fmt: skip


def run(port: int, rate: Rate) -> dict[str, Any]:
    """Run ``rate`` against the SIP server on 127.0.0.1:``port``: calls created,
    successful and failed (and each kind of failure SIPp counted), the rate the set-ups
    completed at, and INVITE-to-200 times in ms."""
    sipp = binary()
    if sipp is None:
        raise RuntimeError("SIPp is not installed (ci/system-packages.sh installs sip-tester)")
    with tempfile.TemporaryDirectory(prefix="bench-sip-") as folder:
        done = subprocess.run(
            rate.argv(sipp, port),
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=rate.longest + 10,
            check=False,
        )
        stats = final_stats(Path(folder, "stat.csv"))
        setups = setup_times(next(Path(folder).glob("*_rtt.csv"), None))
    created = int(stats.get("TotalCallCreated", 0))
    return {
        "rate": rate.rate,
        "calls": rate.calls,
        "seconds": rate.seconds,
        "hold": rate.hold,
        "sipp_exit": done.returncode,
        "created": created,
        "successful": int(stats.get("SuccessfulCall(C)", 0)),
        "failed": int(stats.get("FailedCall(C)", 0)),
        "failures": failures(stats),
        "completed_rate": completed_rate(setups),
        "setup_ms": {
            name: None if math.isnan(ms) else ms
            for name, ms in percentiles([ms for _, ms in setups], (50, 99)).items()
        },
    }


def final_stats(path: Path) -> dict[str, str]:
    """SIPp's counters at the end of a run: the last line of its ``-trace_stat`` file."""
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False)) if len(rows) > 1 else {}


def failures(stats: dict[str, str]) -> dict[str, int]:
    """Each kind of failed call SIPp counted (``FailedMaxUDPRetrans`` ...), where any."""
    found = {}
    for name, value in stats.items():
        counted = name.startswith("Failed") and name.endswith("(C)") and name != "FailedCall(C)"
        if counted and value.isdigit() and int(value):
            found[name.removesuffix("(C)")] = int(value)
    return found


def setup_times(path: Path | None) -> list[tuple[float, float]]:
    """(when, ms) of each call's INVITE-to-200 time, from SIPp's ``-trace_rtt`` file
    (``Date_ms;response_time_ms;rtd_no``; ``when`` is ms from SIPp's start)."""
    if path is None:
        return []
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))[1:]
    return sorted((float(r[0]), float(r[1])) for r in rows if len(r) >= 3 and r[2].strip() == "1")


def completed_rate(setups: list[tuple[float, float]]) -> float | None:
    """Set-ups completed per second: calls answered after the first, over the time from
    the first answer to the last (None: fewer than two answered)."""
    if len(setups) < 2:
        return None
    first, last = setups[0][0], setups[-1][0]
    return round((len(setups) - 1) / ((last - first) / 1000), 2) if last > first else None
