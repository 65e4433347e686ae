"""The echo benchmark's tables and its verdict on the issue's targets, from a result dict.

One set of rows feeds both the plain-text table printed by the run
(:func:`bench._common.table`) and the markdown written beside the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.echo.cpus import where

Run = dict[str, Any]

FLOWCAT = "flowcat-ft"
FLOWCAT_GIL = "flowcat-gil"
FLOOR = "floor"
PIPECAT = "pipecat"
FLOWCAT_TWILIO = "flowcat-ft-twilio"
FLOOR_TWILIO = "floor-twilio"
FLOWCAT_RTP = "flowcat-ft-rtp"
FLOWCAT_RTP_PACED = "flowcat-ft-rtp-paced"
COSTS = ((FLOWCAT, FLOOR), (FLOWCAT_TWILIO, FLOOR_TWILIO))
"""The rows whose p99 difference is the pipeline's own cost, on each message format."""

HEADERS = (
    "CPUs",
    "calls",
    "server",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "throughput",
    "failed/closed",
    "server cores",
    "CPU µs/frame",
    "vol cs/frame",
    "invol cs/frame",
    "loadgen %",
    "others cores",
)
THREAD_HEADERS = (
    "CPUs",
    "calls",
    "server",
    "thread",
    "threads",
    "cores",
    "CPU µs/frame",
    "vol cs/frame",
    "invol cs/frame",
)


def held(run: Run, p99_ms: float, throughput: float = 0.999) -> bool:
    """Whether ``run`` kept every frame coming back (to ``throughput``) at p99 ≤ ``p99_ms``."""
    p99 = run["rtt_ms"]["p99"]
    return p99 is not None and p99 <= p99_ms and (run["throughput"] or 0) >= throughput


def _ordered(runs: Sequence[Run], labels: dict[str, str]) -> list[Run]:
    """By the servers' CPUs, calls, then in the order the servers are listed in ``labels``."""
    order = {key: i for i, key in enumerate(labels)}

    def key(run: Run) -> tuple[int, list[int], int, int]:
        return run["cores"], run["server_cpus"] or [], run["calls"], order.get(run["server"], 99)

    return sorted(runs, key=key)


def _of_setup(runs: Sequence[Run], setup: dict[str, Any]) -> list[Run]:
    return [r for r in runs if r["server_cpus"] == setup["server_cpus"]]


def widest(runs: Sequence[Run]) -> list[Run]:
    """The runs whose servers had the most CPUs (all of them, unless pinned)."""
    most = max((r["cores"] for r in runs), default=0)
    return [r for r in runs if r["cores"] == most]


def rows(runs: Sequence[Run], labels: dict[str, str]) -> list[tuple[object, ...]]:
    """One row per run."""
    out = []
    for run in _ordered(runs, labels):
        rtt = run["rtt_ms"]
        out.append(
            (
                run["cores"],
                run["calls"],
                labels.get(run["server"], run["server"]),
                *(_ms(rtt[p]) for p in ("p50", "p90", "p99", "p99.9", "max")),
                f"{run['throughput']:.4f}" if run["throughput"] is not None else "-",
                f"{run['failed']}/{run['closed']}",
                _num(run["server_cpu_cores"], 2),
                _num(run["cpu_us_per_frame"], 0),
                _num(run["voluntary_switches_per_frame"], 2),
                _num(run["nonvoluntary_switches_per_frame"], 2),
                _num(run["loadgen_cpu_percent"], 0),
                _num(run["other_cpu_cores"], 2),
            )
        )
    return out


def thread_rows(runs: Sequence[Run], labels: dict[str, str]) -> list[tuple[object, ...]]:
    """Where each run's server CPU went: one row per thread name that used any, busiest
    first, the run named on its first row only."""
    out = []
    for run in _ordered(runs, labels):
        first = (run["cores"], run["calls"], labels.get(run["server"], run["server"]))
        for thread in run["threads"]:
            figures = (
                _num(thread["cores"], 2),
                _num(thread["cpu_us_per_frame"], 0),
                _num(thread["voluntary_switches_per_frame"], 2),
                _num(thread["nonvoluntary_switches_per_frame"], 2),
            )
            if _idle(thread):
                continue
            out.append((*first, thread["name"], thread["threads"], *figures))
            first = ("", "", "")
    return out


def _idle(thread: dict[str, Any]) -> bool:
    """Whether a thread did too little in the window to show (its figures round to 0)."""
    cpu = thread["cpu_us_per_frame"] or 0
    switches = thread["voluntary_switches_per_frame"] or 0
    switches += thread["nonvoluntary_switches_per_frame"] or 0
    return cpu < 0.5 and switches < 0.005


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def markdown_table(headers: Sequence[str], body: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


def _by(runs: Sequence[Run], server: str) -> dict[int, Run]:
    return {r["calls"]: r for r in runs if r["server"] == server}


def pipeline_cost(
    runs: Sequence[Run], ours_key: str, floor_key: str
) -> list[tuple[int, float, float, float]]:
    """(calls, p99 of ``ours_key``, p99 of ``floor_key``, difference) at every point both
    rows ran."""
    ours, floor = _by(runs, ours_key), _by(runs, floor_key)
    out = []
    for calls in sorted(ours.keys() & floor.keys()):
        a, b = ours[calls]["rtt_ms"]["p99"], floor[calls]["rtt_ms"]["p99"]
        if a is not None and b is not None:
            out.append((calls, a, b, a - b))
    return out


def capacity(runs: Sequence[Run], server: str, p99_ms: float) -> int:
    """The most calls ``server`` held at p99 ≤ ``p99_ms`` before its first miss (0: none)."""
    best = 0
    for calls, run in sorted(_by(runs, server).items()):
        if not held(run, p99_ms):
            break
        best = calls
    return best


def scaling_rows(result: dict[str, Any]) -> list[tuple[object, ...]]:
    """The scaling curve: per row, the most calls held at p99 ≤ 5 ms on each setup's CPUs."""
    return [
        (label, *(capacity(_of_setup(result["runs"], s), key, 5.0) for s in result["setups"]))
        for key, label in result["labels"].items()
    ]


def scaling_headers(result: dict[str, Any]) -> tuple[str, ...]:
    return ("calls held at p99 ≤ 5 ms on N CPUs", *(str(s["cores"]) for s in result["setups"]))


def targets(result: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, what this run shows, met? — None where the run cannot tell), judged on the
    runs whose servers had the most CPUs."""
    runs = widest(result["runs"])
    ours, pipecat = _by(runs, FLOWCAT), _by(runs, PIPECAT)
    out: list[tuple[str, str, bool | None]] = []

    at400 = ours.get(400)
    if at400 is None:
        out.append(("100% throughput and p99 ≤ 3 ms at 400 calls", "not run", None))
    else:
        shown = f"p99 {_ms(at400['rtt_ms']['p99'])} ms, throughput {at400['throughput']:.4f}"
        out.append(("100% throughput and p99 ≤ 3 ms at 400 calls", shown, held(at400, 3.0)))

    if 200 in ours and 200 in pipecat:
        a, b = ours[200]["rtt_ms"]["p99"], pipecat[200]["rtt_ms"]["p99"]
        ratio = b / a if a and b else math.nan
        shown = f"pipecat {_ms(b)} ms / flowcat-ft {_ms(a)} ms = {ratio:.1f}x"
        out.append(("p99 ≥ 20x lower than pipecat's at 200 calls", shown, ratio >= 20))
    else:
        out.append(("p99 ≥ 20x lower than pipecat's at 200 calls", "not run", None))

    below = [r for r in ours.values() if held(r, 100.0)]
    worst = max(below, key=lambda r: r["rtt_ms"]["p99.9"] / r["rtt_ms"]["p99"], default=None)
    if worst is None:
        out.append(("p99.9 ≤ 3x p99 below saturation", "no point below saturation", None))
    else:
        ratio = worst["rtt_ms"]["p99.9"] / worst["rtt_ms"]["p99"]
        shown = f"worst {ratio:.1f}x (at {worst['calls']} calls)"
        out.append(("p99.9 ≤ 3x p99 below saturation", shown, ratio <= 3))

    long = result.get("long_run")
    if long is None:
        out.append(("max ≤ 20 ms at 10 calls over 60 s", "not run (full run only)", None))
    else:
        out.append(
            (
                "max ≤ 20 ms at 10 calls over 60 s",
                f"max {_ms(long['rtt_ms']['max'])} ms over {long['seconds']:g} s",
                long["rtt_ms"]["max"] is not None and long["rtt_ms"]["max"] <= 20,
            )
        )

    if ours and _by(runs, FLOWCAT_GIL):
        ft, gil = capacity(runs, FLOWCAT, 5.0), capacity(runs, FLOWCAT_GIL, 5.0)
        shown = f"flowcat-ft {ft} calls, GIL twin {gil} calls (largest point run)"
        met = ft > 0 and ft >= 1.5 * gil
        out.append(("≥ 1.5x the calls of the GIL twin at p99 ≤ 5 ms", shown, met))
    else:
        out.append(("≥ 1.5x the calls of the GIL twin at p99 ≤ 5 ms", "not run", None))
    return out + rtp_targets(runs)


def rtp_targets(runs: Sequence[Run]) -> list[tuple[str, str, bool | None]]:
    """Issue 16's targets for SIP/RTP calls (unpaced, as the WebSocket rows run): p99 no
    higher than the WebSocket echo's at any point both ran, and 300 calls at p99 ≤ 10 ms."""
    rtp, websocket = _by(runs, FLOWCAT_RTP), _by(runs, FLOWCAT)
    both = sorted(rtp.keys() & websocket.keys())
    target = "RTP echo p99 ≤ the WebSocket echo's at every point"
    if not both:
        out = [(target, "not run", None)]
    else:
        worse = [c for c in both if not _at_most(rtp[c], websocket[c])]
        shown = ", ".join(
            f"{c}: {_ms(rtp[c]['rtt_ms']['p99'])} vs {_ms(websocket[c]['rtt_ms']['p99'])} ms"
            + ("" if held(rtp[c], math.inf) else f" (throughput {rtp[c]['throughput'] or 0:.4f})")
            for c in worse or both
        )
        out = [(target, ("higher at " if worse else "") + shown, not worse)]
    target = "≥ 300 concurrent RTP calls with p99 ≤ 10 ms"
    if not rtp:
        return [*out, (target, "not run", None)]
    held_calls = capacity(runs, FLOWCAT_RTP, 10.0)
    shown = f"{held_calls} calls (largest point run: {max(rtp)})"
    met: bool | None = held_calls >= 300 if held_calls >= 300 or max(rtp) >= 300 else None
    return [*out, (target, shown, met)]


def _at_most(run: Run, other: Run) -> bool:
    """Whether ``run`` got its frames back (as :func:`held` counts) at a p99 no higher
    than ``other``'s."""
    mine, theirs = run["rtt_ms"]["p99"], other["rtt_ms"]["p99"]
    return mine is not None and (theirs is None or mine <= theirs) and held(run, math.inf)


def memory_rows(result: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(server, idle sessions, RSS growth per session) for each server measured."""
    return [
        (result["labels"][key], s["idle"]["opened"], _num(s["idle"]["bytes_per_session"], 0))
        for key, s in result["servers"].items()
        if s.get("idle")
    ]


def markdown(result: dict[str, Any], plot_name: str | None) -> str:
    """The whole report: setup, results table, CPU by thread, pipeline cost, idle memory,
    targets."""
    labels: dict[str, str] = result["labels"]
    lines = [
        f"# Echo benchmark, {result['date']}, {result['machine_cores']} cores"
        + (" (quick)" if result["quick"] else ""),
        "",
        f"`{result['command']}`: {result['seconds']:g} s measured per point, "
        f"{result['warmup']:g} s warm-up; µ-law 160-byte frames at 50 fps per call; "
        "round trip = load generator send → echo back. Runtime overhead, not "
        "conversational latency; the load generator shares the machine "
        "(its CPU, and other processes' in *others cores*, are in the table).",
        "",
        "## Servers",
        "",
    ]
    for key, server in result["servers"].items():
        lines.append(f"- **{labels[key]}** ({server['mode']} messages): {server['description']}")
    lines += ["", "## CPUs", ""]
    for setup in result["setups"]:
        flowcat = "; ".join(
            f"flowcat-ft on {build}: {c['loops']} event-loop thread(s), "
            f"{c['threads']} stage thread(s) ({c['how']})"
            for build, c in setup["configs"].items()
        )
        lines.append(
            f"- servers on {where(setup['server_cpus'])}, load generator on "
            f"{where(setup['loadgen_cpus'])}" + (f"; {flowcat}" if flowcat else "")
        )
    lines += ["", "## Round trips", "", markdown_table(HEADERS, rows(result["runs"], labels))]
    if len(result["setups"]) > 1:
        body = scaling_rows(result)
        lines += ["", "## Scaling", "", markdown_table(scaling_headers(result), body)]
    if plot_name:
        lines += ["", f"![p99 and p99.9 round trip, and throughput, against calls]({plot_name})"]
    lines += [
        "",
        "## Where the server's CPU goes, by thread",
        "",
        markdown_table(THREAD_HEADERS, thread_rows(result["runs"], labels)),
    ]
    for ours, floor in COSTS:
        cost = pipeline_cost(widest(result["runs"]), ours, floor)
        if cost:
            lines += [
                "",
                f"## The pipeline's own cost: p99({ours}) - p99({floor})",
                "",
                markdown_table(
                    ("calls", f"{ours} p99 ms", f"{floor} p99 ms", "difference ms"),
                    [(c, _ms(a), _ms(b), f"{d:+.2f}") for c, a, b, d in cost],
                ),
            ]
    lines += [
        "",
        "## Memory per idle session",
        "",
        markdown_table(("server", "idle sessions", "RSS per session, B"), memory_rows(result)),
        "",
        "## Targets (issue 8)",
        "",
        markdown_table(
            ("target", "this run", "met"),
            [
                (t, shown, {True: "yes", False: "no", None: "-"}[met])
                for t, shown, met in targets(result)
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
