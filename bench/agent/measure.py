"""Serving the agent under test and measuring one point: the load generator's
conversations, and the server's CPU by part over the window, read from its
``/status.json``."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._common import ROOT, python_of
from bench.agent import report
from bench.agent.conversation import Conversations, stream_key
from bench.echo import loadgen, servers
from bench.echo.servers import Running, Server

LABELS = {"ft": "3.13t", "gil": "GIL"}
OFFLINE_CONFIG = ROOT / "bench" / "agent" / "offline.yaml"


def agent_server(build: str, config: Path) -> Server:
    """``flowcat-ft serve CONFIG`` on the ``"ft"`` or ``"gil"`` venv."""
    stream_key()  # in the environment the server inherits
    return Server(
        f"flowcat-ft serve ({LABELS[build]})",
        python_of(build),
        "bench.agent.serve",
        (str(config),),
        f"flowcat-ft serve {shown(config)} on {LABELS[build]}",
    )


def shown(path: Path) -> str:
    """``path`` as a command line in a result shows it: from the repository's root."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def status_cpu(port: int) -> dict[str, Any]:
    """The server's CPU by part, from its ``/status.json``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as reply:
        return json.loads(reply.read())["cpu"]


def measure(running: Running, load: Conversations, label: str) -> dict[str, Any]:
    """Run ``load`` against the server; the summary of every utterance, and the server's CPU
    by part over the measured window, with the CPU that everyone else used meanwhile."""
    marks: dict[str, tuple[float, dict[str, Any], tuple[float, float]]] = {}

    def on_progress(line: str) -> None:
        if line in ("measure", "measured"):
            marks[line] = (time.monotonic(), status_cpu(running.port), servers.machine_busy())

    result = loadgen.run(running.port, load, on_progress)
    (begin, before, machine0), (end, after, machine1) = marks["measure"], marks["measured"]
    seconds = end - begin
    parts = report.cpu_by_part(before, after, seconds, load.calls)
    cpu = report.cpu_totals(before, after, parts, seconds, load.calls)
    busy, total = (b - a for a, b in zip(machine0, machine1, strict=True))
    machine = busy / max(total, 1e-9) * (os.cpu_count() or 1)
    others = machine - cpu["server_cores"] - result["loadgen_cpu_percent"] / 100
    return {
        "python": label,
        "calls": load.calls,
        "seconds": round(seconds, 2),
        "summary": report.summarize(result),
        "cpu": cpu,
        "parts": parts,
        "other_cpu_cores": round(max(0.0, others), 3),
        "loadgen": result,
    }
