"""A soak run's figures: the targets it is judged by, a row per interval as text and as
markdown. Pure functions of the result, so they are tested without running one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench._common import table

Row = dict[str, Any]

COLUMNS = (
    "min",
    "calls up",
    "started",
    "ended",
    "server closed",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "RSS MB",
    "FDs",
    "threads",
    "slabs in use",
    "gc pauses",
    "gc max ms",
    "server cores",
    "others cores",
    "machine hiccup ms",
    "stolen ms",
)


def cells(row: Row, interval: float) -> list[object]:
    rtt = row["rtt_ms"]
    others = (row["machine_busy_s"] - row["server_cpu_s"]) / interval
    return [
        round(row["t"] / 60, 1),
        row["calls_up"],
        row["calls_opened"],
        row["calls_ended"],
        row["closed_by_server"],
        _ms(rtt["p50"]),
        _ms(rtt["p99"]),
        _ms(rtt["p99.9"]),
        _ms(rtt["max"]),
        round(row["rss_bytes"] / 1e6, 1),
        row["open_fds"],
        row["threads"],
        row["slabs_in_use"],
        row["gc_pauses"],
        round(row["gc_max_pause_ms"], 2),
        round(row["server_cpu_s"] / interval, 2),
        round(max(0.0, others), 2),
        _ms(row.get("machine_hiccup_max_ms")),
        round(row["machine_steal_s"] * 1000) if "machine_steal_s" in row else math.nan,
    ]


def lost_percent(sent: int, received: int) -> float:
    return round(100 * (sent - received) / sent, 3) if sent else math.nan


def _ms(value: float | None) -> float:
    return math.nan if value is None else value


def _mb(value: int | None) -> float:
    return math.nan if value is None else round(value / 1e6, 1)


def table_text(result: dict[str, Any]) -> str:
    """A row per interval; with ``--trace-memory``, tracemalloc's figure beside RSS."""
    interval = result["interval_s"]
    columns, rows = list(COLUMNS), [cells(row, interval) for row in result["rows"]]
    if result.get("trace_memory"):
        at = columns.index("RSS MB") + 1
        columns.insert(at, "traced MB")
        for shown, row in zip(rows, result["rows"], strict=True):
            shown.insert(at, _mb(row["traced_bytes"]))
    return table(columns, rows)


def line(row: Row) -> str:
    """One interval as it ends, for the console."""
    rtt = row["rtt_ms"]
    return (
        f"  {row['t']:7.0f} s: {row['calls_up']} up, p99 {_ms(rtt['p99']):.2f} ms, "
        f"max {_ms(rtt['max']):.2f} ms, RSS {row['rss_bytes'] / 1e6:.1f} MB, "
        f"{row['open_fds']} FDs, {row['threads']} threads, {row['slabs_in_use']} slabs, "
        f"{row['gc_pauses']} gc pauses"
        + ("" if row.get("traced_bytes") is None else f", traced {_mb(row['traced_bytes'])} MB")
    )


def memory_slope(rows: Sequence[Row], key: str = "rss_bytes") -> float | None:
    """Least-squares growth of ``key`` (RSS; ``"traced_bytes"``: tracemalloc's figure) in
    MB per hour over ``rows`` (None under 2 rows, or where a row has no figure)."""
    if len(rows) < 2 or any(row.get(key) is None for row in rows):
        return None
    xs = [row["at_s"] / 3600 for row in rows]
    ys = [row[key] / 1e6 for row in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread


def warmup_rows(rows: Sequence[Row]) -> int:
    """Rows left out of the RSS slope: the first tenth of the run, at least one."""
    return max(1, len(rows) // 10)


#: A light load's tail target: over a long run at this many calls or fewer, no echo
#: takes longer than FEW_CALLS_MAX_MS.
FEW_CALLS, FEW_CALLS_MAX_MS = 10, 20.0


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The run's figures and its targets (``met``: True, False, or None where unknown)."""
    rows, start, end, totals = result["rows"], result["start"], result["end"], result["totals"]
    steady = rows[warmup_rows(rows) :]
    slope = memory_slope(steady)
    traced_slope = memory_slope(steady, "traced_bytes")
    p99s = [row["rtt_ms"]["p99"] for row in rows if row["rtt_ms"]["p99"] is not None]
    p99_ratio = max(p99s) / p99s[0] if p99s and p99s[0] else None
    # A live call holds one connection: what is flat, if nothing leaks, is the rest.
    fds = [row["open_fds"] - row["calls_active"] for row in steady]
    threads = [row["threads"] for row in steady]
    pauses = end["gc_pauses"] - start["gc_pauses"]
    hiccups = [row["machine_hiccup_max_ms"] for row in rows if "machine_hiccup_max_ms" in row]
    hiccup_max = max(hiccups) if hiccups else None
    figures = {
        "rss_slope_mb_per_h": None if slope is None else round(slope, 2),
        "traced_slope_mb_per_h": None if traced_slope is None else round(traced_slope, 2),
        "rss_mb": [round(rows[0]["rss_bytes"] / 1e6, 1), round(end["rss_bytes"] / 1e6, 1)]
        if rows
        else None,
        "fds": [min(fds), max(fds)] if fds else None,
        "threads": [min(threads), max(threads)] if threads else None,
        "slabs_in_use_at_end": end["slabs_in_use"],
        "p99_ratio_to_first": None if p99_ratio is None else round(p99_ratio, 2),
        "rtt_max_ms": totals["rtt_ms"]["max"],
        "frames_lost_percent": lost_percent(totals["sent"], totals["received"]),
        "calls_started": totals["calls_opened"],
        "calls_failed": totals["calls_failed"],
        "gc_pauses": pauses,
        "gc_max_pause_ms": end["gc_max_pause_ms"],
        "gc_collections_by_policy": end["gc_reasons"],
        "gc_objects_collected": end.get("gc_collected"),
        "machine_hiccup_max_ms": hiccup_max,
    }
    figures["targets"] = [
        ("RSS slope ≤ 1 MB/h after warm-up", _fmt(slope, "MB/h"), _le(slope, 1.0)),
        ("FDs flat (less one per live call)", _span(fds), _flat(fds)),
        ("threads flat", _span(threads), _flat(threads)),
        ("every slab back at the end", f"{end['slabs_in_use']} in use", end["slabs_in_use"] == 0),
        ("p99 in every interval ≤ 1.5x the first's", _fmt(p99_ratio, "x"), _le(p99_ratio, 1.5)),
        ("gc pauses reported", f"{pauses}, longest {end['gc_max_pause_ms']:.2f} ms", None),
    ]
    if traced_slope is not None:
        figures["targets"].append(
            ("Python objects' memory slope (tracemalloc)", _fmt(traced_slope, "MB/h"), None)
        )
    if result["calls"] <= FEW_CALLS:
        rtt_max = totals["rtt_ms"]["max"]
        shown = _fmt(rtt_max, "ms")
        if hiccup_max is not None:
            shown += f" (the machine's worst hiccup: {hiccup_max:.2f} ms)"
        figures["targets"].append(
            (
                f"max round trip ≤ {FEW_CALLS_MAX_MS} ms at {FEW_CALLS} calls",
                shown,
                _le(rtt_max, FEW_CALLS_MAX_MS),
            )
        )
    return figures


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.2f} {unit}"


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _span(values: Sequence[int]) -> str:
    return f"{min(values)}..{max(values)}" if values else "-"


def _flat(values: Sequence[int]) -> bool | None:
    """Flat: no more than a few apart (a connection or a thread coming and going)."""
    return None if not values else max(values) - min(values) <= 4


def markdown(result: dict[str, Any], plotted: str | None) -> str:
    summary = result["summary"]
    kind = "quick run" if result["quick"] else "run"
    lines = [
        f"# Soak {kind}, {result['date']}, {result.get('cores', '?')} cores",
        "",
        f"`{result['command']}`: `{result['server_command']}` (the echo agent) loaded with "
        f"{result['calls']} calls ({result['load']:g} of {result['capacity']}, from "
        f"{result['capacity_from']}) for {result['seconds']:g} s; calls of "
        f"{result['call_length_median_s']:g} s median (log-normal, a tenth to ten times), "
        "each slot dialling a new call as its call ends; µ-law at 50 fps; round trip = load "
        "generator send → echo back, through the server's real-time output pacing.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(f"| {name} | {shown} | {_verdict(met)} |" for name, shown, met in summary["targets"]),
        "",
        f"{summary['calls_started']} calls started ({summary['calls_failed']} failed to open), "
        f"{summary['frames_lost_percent']}% of frames lost, max round trip "
        f"{summary['rtt_max_ms']} ms; collections by the server's policy: "
        f"{summary['gc_collections_by_policy']} (objects they found, start-up's included: "
        f"{summary['gc_objects_collected']}).",
        "",
        *_busy_note(result),
        "*machine hiccup ms*: the longest a separate process sleeping 1 ms at a time was "
        "woken late in the interval (`bench.soak.hiccups`); *stolen ms*: CPU time the "
        "hypervisor gave other guests (`steal`, all cores). A round-trip stall that "
        "coincides with a hiccup of the same size is the machine's, not the server's.",
        "",
        _markdown_table(table_text(result)),
    ]
    if plotted:
        lines += ["", f"![soak]({plotted})"]
    return "\n".join(lines) + "\n"


def others_cores(result: dict[str, Any]) -> float:
    """What the rest of the machine used on average over the run, in cores."""
    rows, interval = result["rows"], result["interval_s"]
    used = [(row["machine_busy_s"] - row["server_cpu_s"]) / interval for row in rows]
    return max(0.0, sum(used) / len(used)) if used else 0.0


def _busy_note(result: dict[str, Any]) -> list[str]:
    others, total = others_cores(result), result.get("cores") or 1
    if others < total / 4:
        return []
    return [
        f"**The machine was busy**: other processes (the load generator among them) used "
        f"{others:.2f} of its {total} cores on average (*others cores*). A stall longer "
        "than the echo agent's 80 ms pacing lead stays in that call's round trip until it "
        "ends, so these round trips measure the machine as much as the server.",
        "",
    ]


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[met]


def _markdown_table(text: str) -> str:
    rows = [line.split("  ") for line in text.splitlines()]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    head, body = rows[0], rows[2:]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(out)
