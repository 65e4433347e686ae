"""Plot a soak result over time: round trip (p50, p99, p99.9, max), RSS (with
``--trace-memory``, the memory tracemalloc counts beside it), open FDs and threads, slabs
in use, and gc pauses, a point per interval. Run on the GIL venv, where matplotlib has a
wheel::

    .venv-gil/bin/python -m bench.soak.plot RESULT.json OUT.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(result_path: Path, png: Path) -> None:
    result = json.loads(result_path.read_text())
    rows = result["rows"]
    minutes = [row["t"] / 60 for row in rows]
    fig, ((rtt, rss), (fds, slabs)) = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    for key, style in (("p50", "o-"), ("p99", "o-"), ("p99.9", "x--"), ("max", "^:")):
        values = [row["rtt_ms"][key] for row in rows]
        rtt.plot(minutes, [v if v is not None else float("nan") for v in values], style, label=key)
    rtt.set_yscale("log")
    rtt.set_ylabel("round trip, ms")
    rtt.legend(fontsize=8)
    rss.plot(minutes, [row["rss_bytes"] / 1e6 for row in rows], "o-", color="C4")
    rss.set_ylabel("server RSS, MB")
    if result.get("trace_memory"):  # Python's objects (tracemalloc), on their own scale
        traced = rss.twinx()
        traced.plot(minutes, [row["traced_bytes"] / 1e6 for row in rows], "s--", color="C5")
        traced.set_ylabel("traced by tracemalloc, MB", color="C5")
    fds.plot(minutes, [row["open_fds"] for row in rows], "o-", label="open FDs")
    fds.plot(minutes, [row["threads"] for row in rows], "s-", label="threads")
    fds.plot(minutes, [row["calls_up"] for row in rows], "x:", label="calls up")
    fds.set_ylabel("count")
    fds.legend(fontsize=8)
    slabs.plot(minutes, [row["slabs_in_use"] for row in rows], "o-", label="slabs in use")
    slabs.set_ylabel("slabs in use")
    pauses = slabs.twinx()
    pauses.plot(minutes, [row["gc_pauses"] for row in rows], "s--", color="C3", label="gc")
    pauses.set_ylabel("gc pauses so far", color="C3")
    for axis in (rtt, rss, fds, slabs):
        axis.grid(True, alpha=0.3)
    for axis in (fds, slabs):
        axis.set_xlabel("minutes")
    fig.suptitle(
        f"Soak: flowcat-ft serve (echo agent), {result['calls']} calls with churn, "
        f"{result['seconds'] / 60:g} min, {result.get('cores', '?')} cores, {result['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
