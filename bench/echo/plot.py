"""Plot an echo benchmark result: p99 and p99.9 round trip against calls (log scale), and
throughput, one line per row (and per setup of CPUs, where a run has several). Run by the
kit on the GIL venv, where matplotlib has a wheel::

    .venv-gil/bin/python -m bench.echo.plot RESULT.json OUT.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import ticker


def main(result_path: Path, png: Path) -> None:
    result = json.loads(result_path.read_text())
    setups = result["setups"]
    lines = [(setup, key, label) for setup in setups for key, label in result["labels"].items()]
    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(13, 5))
    for n, (setup, key, label) in enumerate(lines):
        runs = [r for r in result["runs"] if r["server_cpus"] == setup["server_cpus"]]
        runs = sorted((r for r in runs if r["server"] == key), key=lambda r: r["calls"])
        runs = [r for r in runs if r["rtt_ms"]["p99"] is not None]
        if len(setups) > 1:
            label += f", {setup['cores']} CPUs"
        if not runs:
            continue
        calls = [r["calls"] for r in runs]
        color = f"C{n}"
        latency.plot(calls, [r["rtt_ms"]["p99"] for r in runs], "o-", color=color, label=label)
        p999 = [r["rtt_ms"]["p99.9"] for r in runs]
        latency.plot(calls, p999, "x--", color=color, alpha=0.6)
        throughput.plot(calls, [r["throughput"] * 100 for r in runs], "o-", color=color)
    points = result["points"]
    for axis in (latency, throughput):
        axis.set_xscale("log")
        axis.set_xticks(points, [str(p) for p in points])
        axis.xaxis.set_minor_locator(ticker.NullLocator())
    latency.set_yscale("log")
    latency.set_xlabel("concurrent calls (50 frames/s each)")
    latency.set_ylabel("round trip, ms (solid p99, dashed p99.9)")
    latency.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize=8)
    throughput.set_xlabel("concurrent calls")
    throughput.set_ylabel("frames back / frames expected, %")
    throughput.set_ylim(0, 105)
    throughput.grid(True, alpha=0.3)
    fig.suptitle(
        f"Echo round trip, {result['cores']} cores, {result['date']} "
        "(runtime overhead, not conversational latency; the load generator shares the machine)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
