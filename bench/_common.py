"""What every bench shares: arguments, percentiles, CPU time, tables, the JSON result line,
and running a bench under the other interpreter (or in a fresh process) as a child.

A bench's last line of output is one JSON object; :func:`finish` prints it (adding
``python`` and ``cores``) and :func:`run_child` reads it back from a child process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = {"ft": ROOT / ".venv-ft", "gil": ROOT / ".venv-gil"}


# -- the interpreter and the machine -----------------------------------------------------------


def build() -> str:
    """``"ft"`` for a free-threaded build of CPython, ``"gil"`` for the default build."""
    return "ft" if sysconfig.get_config_var("Py_GIL_DISABLED") else "gil"


def interpreter() -> str:
    """This interpreter, e.g. ``"3.13.5 ft"``; ``"ft+gil"`` where an extension module has
    turned the GIL back on in a free-threaded build (its numbers are then not 3.13t's)."""
    tag = build()
    if tag == "ft" and sys._is_gil_enabled():
        tag = "ft+gil"
    return f"{platform.python_version()} {tag}"


def cores() -> int:
    """CPU cores this process may run on."""
    return os.process_cpu_count() or 1


def other_build() -> str:
    return "gil" if build() == "ft" else "ft"


def python_of(which: str) -> Path:
    """The python of the ``"ft"`` or ``"gil"`` venv in the repo root."""
    return VENVS[which] / "bin" / "python"


# -- arguments -----------------------------------------------------------------------------


def parser(doc: str | None, child: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the options every bench has; ``doc`` is the module docstring.

    ``child``: also take ``--child``, which :func:`run_child` passes to a bench that runs
    part of its work in a child process.
    """
    summary = doc.strip().splitlines()[0] if doc else None
    p = argparse.ArgumentParser(description=summary)
    p.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON result to PATH")
    if child:
        p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


# -- numbers -------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of already-sorted samples; NaN if none."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def percentiles(
    samples: Sequence[float], ps: Sequence[float] = (50, 99, 99.9), scale: float = 1.0
) -> dict[str, float]:
    """``{"p50": ..., "p99": ..., "p99.9": ..., "max": ...}`` of ``samples`` times ``scale``."""
    ordered = sorted(samples)
    out = {f"p{p:g}": percentile(ordered, p) * scale for p in ps}
    out["max"] = (ordered[-1] if ordered else math.nan) * scale
    return out


# -- CPU time ------------------------------------------------------------------------------

thread_cpu = time.thread_time
"""CPU seconds used by the calling thread."""

process_cpu = time.process_time
"""CPU seconds used by every thread of this process."""


def rss_bytes() -> int:
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- pacing --------------------------------------------------------------------------------


def pace(count: int, interval_ns: int, emit: Callable[[int, int], None]) -> None:
    """Release ``count`` messages, message ``k`` due ``k * interval_ns`` after the start.

    Sleeps until the next message is due, then calls ``emit(first, n)`` for the ``n``
    messages ``first, first + 1, ...`` due by now, so at spacings shorter than a sleep's
    wake-up time (~60 µs) messages leave in small bursts, as from a transport thread
    serving many sockets.
    """
    now = time.perf_counter_ns
    begin = now()
    sent = 0
    while sent < count:
        t = now()
        due = min(count, (t - begin) // interval_ns + 1)
        if due == sent:
            time.sleep((begin + sent * interval_ns - t) / 1e9)
        else:
            emit(sent, due - sent)
            sent = due


# -- output --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True))
        lines.append("  ".join((first, *rest)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def header(name: str, args: argparse.Namespace) -> None:
    """The first line of a bench's output: what runs, on what."""
    mode = "quick" if args.quick else "full"
    print(f"# bench.{name} ({mode}) on Python {interpreter()}, {cores()} cores")


def finish(result: dict[str, object], args: argparse.Namespace) -> None:
    """Print the result as the last line of output (and write it to ``--json``)."""
    result = {**result, "python": interpreter(), "cores": cores()}
    line = json.dumps(result, separators=(",", ":"))
    if args.json:
        Path(args.json).write_text(line + "\n")
    print(line, flush=True)


def plot_on_gil(module: str, json_path: Path, png: Path) -> str | None:
    """Draw a result's plot with ``python -m module JSON PNG`` on the GIL venv, where
    matplotlib has a wheel (installed there if missing); the PNG's file name, or None if
    it could not be drawn."""
    python = python_of("gil")
    has = subprocess.run([python, "-c", "import matplotlib"], capture_output=True, check=False)
    if has.returncode != 0:
        pip = [python, "-m", "pip", "install", "-q", "--only-binary", ":all:", "matplotlib"]
        if subprocess.run(pip, check=False).returncode != 0:
            print("no plot: matplotlib does not install on the GIL venv", flush=True)
            return None
    done = subprocess.run([python, "-m", module, str(json_path), str(png)], cwd=ROOT, check=False)
    return png.name if done.returncode == 0 else None


# -- child processes -----------------------------------------------------------------------


def run_child(
    module: str, args: Sequence[str], python: Path | str = sys.executable, timeout: float = 600
) -> dict[str, object]:
    """Run ``python -m module --child *args`` from the repo root; return its JSON result.

    The child's output before its JSON line is discarded; its stderr passes through.
    """
    command = [str(python), "-m", module, "--child", *args]
    done = subprocess.run(
        command, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout}")
    return json.loads(lines[-1])
