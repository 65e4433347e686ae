"""Plot an agent benchmark result: reply latency p50/p95/p99 against simultaneous
conversations, one colour per interpreter; and the server's CPU per conversation by kind
of part. Run by the bench on the GIL venv, where matplotlib has a wheel::

    .venv-gil/bin/python -m bench.agent.plot RESULT.json OUT.png
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

KINDS = (("stage", "-"), ("event loop", "--"), ("worker", ":"))


def main(result_path: Path, png: Path) -> None:
    result = json.loads(result_path.read_text())
    by_python: dict[str, list[dict]] = defaultdict(list)
    for run in result["runs"]:
        by_python[run["python"]].append(run)
    fig, (latency, cpu) = plt.subplots(1, 2, figsize=(13, 5))
    for n, (python, runs) in enumerate(sorted(by_python.items())):
        runs.sort(key=lambda r: r["calls"])
        color = f"C{n}"
        for p, style in (("p50", "o-"), ("p95", "x--"), ("p99", "s:")):
            points = [(r["calls"], r["summary"]["reply_latency_ms"][p]) for r in runs]
            points = [(c, v) for c, v in points if v is not None]
            if points:
                calls, values = zip(*points, strict=True)
                latency.plot(calls, values, style, color=color, label=f"{python} {p}")
        calls = [r["calls"] for r in runs]
        for kind, style in KINDS:
            per_call = [
                sum(p["us_per_call_s"] or 0 for p in r["parts"] if p["kind"] == kind) / 1000
                for r in runs
            ]
            cpu.plot(calls, per_call, style, color=color, marker="o", label=f"{python} {kind}")
    latency.set_xlabel("simultaneous conversations")
    latency.set_ylabel("reply latency at the caller, ms")
    latency.set_ylim(bottom=0)
    latency.grid(True, alpha=0.3)
    latency.legend(fontsize=8)
    cpu.set_xlabel("simultaneous conversations")
    cpu.set_ylabel("server CPU, ms per conversation per second")
    cpu.set_ylim(bottom=0)
    cpu.grid(True, alpha=0.3)
    cpu.legend(fontsize=8)
    fig.suptitle(
        f"{result['agent']} agent, {result['cores']} cores, {result['date']}"
        + (" (quick)" if result["quick"] else "")
        + ": end of question → first audible reply frame (the load generator shares the machine)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
