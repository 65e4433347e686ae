"""Agent benchmark: phone conversations with ``flowcat-ft serve``'s agent, timed at the caller.

The native load generator (``bench/loadgen/loadgen.c``, conversation mode) plays N phone
callers on Twilio Media Streams: each waits for the agent's greeting, asks a short
question every 8 s (espeak-ng's voice, µ-law, line noise in between), and says goodbye
after the measured window. It times every reply at the caller: latency from the end of
the question to the first audible frame, audible length, lag behind a real-time playout
clock, and whether the agent ended the call after goodbye; with ``--barge-in S`` the
goodbye is said S s into a reply, and the time to the carrier's ``clear`` is measured.

The server is ``flowcat-ft serve bench/agent/offline.yaml`` (the default offline agent)
on 3.13t and on its GIL twin (``--interpreters``), one after the other, each loaded at
every point (``--points``) until its reply p99 passes 5 s. At the edges of each window the
bench reads the server's CPU by part from ``/status.json`` (stage threads, event loops,
worker processes: see ``flowcat_ft/cpu.py``). ``--agent cloud`` serves a cloud agent
(Deepgram, an OpenAI-compatible LLM, Cartesia) against local fake providers with
realistic delays (``bench/agent/providers.py``), and reports their own time beside.
Writes ``bench/results/DATE-Nc-agent[-cloud].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    ROOT,
    cores,
    finish,
    header,
    interpreter,
    parser,
    plot_on_gil,
    table,
)
from bench.agent import markdown, report, speech
from bench.agent import providers as fakes
from bench.agent.conversation import Conversations, Voices
from bench.agent.measure import LABELS, OFFLINE_CONFIG, agent_server, measure, shown
from bench.echo import loadgen, servers
from bench.echo.servers import Running

POINTS = (1, 10, 20, 40, 60, 80, 100, 150, 200)
QUICK_POINTS = (1, 10, 40)
SATURATED_P99_MS = 5000.0
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "tmp"


def describe(run: dict[str, Any]) -> str:
    s = run["summary"]
    latency = s["reply_latency_ms"]
    p50, p99 = (report._ms(latency[p]) for p in ("p50", "p99"))
    return (
        f"  {run['calls']:>4} calls  {run['python']:<6} reply p50 {p50:>6} ms  p99 {p99:>6} ms"
        f"  replied {s['replied']}/{s['questions']}  ended {s['ended_by_agent']}/{s['goodbyes']}"
        f"  underruns {s['underruns']}  server {run['cpu']['server_cores']:.2f} cores"
    )


def saturated(run: dict[str, Any]) -> bool:
    s = run["summary"]
    p99 = s["reply_latency_ms"]["p99"]
    return p99 is None or p99 > SATURATED_P99_MS or s["replied"] < 0.5 * s["questions"]


def sweep(
    build: str, config: Path, voices: Voices, points: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every point on one interpreter's server, until it saturates."""
    runs = []
    with Running(agent_server(build, config), LOGS / f"agent-{build}.log") as running:
        print(f"  {running.server.name}: {running.wait_ready()} on port {running.port}", flush=True)
        for calls in points:
            servers.wait_quiet(running, limit=20.0)
            load = Conversations(
                calls,
                voices,
                args.seconds,
                args.warmup,
                args.period,
                greeting_timeout=1.0 if args.agent == "cloud" else 10.0,  # no greeting
                barge_in=args.barge_in,
            )
            run = measure(running, load, LABELS[build])
            runs.append(run)
            print(describe(run), flush=True)
            if saturated(run):
                break
    return runs


def main(args: argparse.Namespace) -> None:
    header("agent", args)
    missing = speech.missing()
    if missing:
        sys.exit(f"bench.agent needs {' and '.join(missing)} (ci/system-packages.sh installs them)")
    loadgen.build()
    voices = Voices.make(LOGS / "agent-voices")
    points = [int(p) for p in args.points.split(",")] if args.points else None
    points = points or list(QUICK_POINTS if args.quick else POINTS)
    builds = args.interpreters.split(",")
    providers = None
    if args.agent == "cloud":
        providers = fakes.start()
        config = fakes.agent_config(providers, LOGS / "agent-cloud.yaml")
    else:
        config = OFFLINE_CONFIG
    runs: list[dict[str, Any]] = []
    provider_times = None
    try:
        for build in builds:
            runs += sweep(build, config, voices, points, args)
        if providers is not None:
            provider_times = providers.report()
    finally:
        if providers is not None:
            providers.stop()
    result: dict[str, Any] = {
        "bench": "agent",
        "agent": args.agent,
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "command": " ".join(["python -m bench.agent", *sys.argv[1:]]),
        "bench_python": interpreter(),
        "cores": cores(),
        "machine_cores": os.cpu_count(),
        "points": points,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "period": args.period,
        "barge_in": args.barge_in,
        "questions": [p.name for p in voices.questions],
        "config": shown(config),
        "providers": provider_times,
        "turn_timeout_s": fakes.TURN_TIMEOUT if providers is not None else None,
        "runs": runs,
    }
    print()
    print(table(report.HEADERS, report.rows(runs)))
    print()
    headers, by_kind = report.kind_rows(runs)
    print(table(headers, by_kind))
    print()
    print(table(report.PART_HEADERS, report.part_rows(runs)))
    if providers is not None:
        print()
        print(table(*report.provider_rows(result["providers"])))
        floor = report.floor_ms(result["providers"], fakes.TURN_TIMEOUT)
        if floor is not None:
            print()
            print(table(report.SHARE_HEADERS, report.share_rows(runs, floor)))
            for verdict in report.share_target(runs, floor):
                print(f"  {verdict}")
    write(result, args.out)
    finish({k: v for k, v in result.items() if k != "runs"} | {"runs": _brief(runs)}, args)


def _brief(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs without the load generator's record of every utterance (the JSON file
    keeps it)."""
    return [{k: v for k, v in run.items() if k != "loadgen"} for run in runs]


def write(result: dict[str, Any], stem: str | None) -> None:
    """``STEM.json``, ``.md`` and (with matplotlib on the GIL venv) ``.png``; the default
    stem is ``bench/results/DATE-Nc-agent[-cloud]``."""
    cloud = "-cloud" if result["agent"] == "cloud" else ""
    path = Path(stem) if stem else RESULTS / f"{result['date']}-{result['cores']}c-agent{cloud}"
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    png = path.with_suffix(".png")
    plotted = plot_on_gil("bench.agent.plot", json_path, png)
    path.with_suffix(".md").write_text(markdown.document(result, plotted))
    print(f"wrote {path}.json, .md" + (", .png" if plotted else ""), flush=True)


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--points", help="comma-separated numbers of calls (default: 1,10,20,40,...)")
    p.add_argument("--seconds", type=float, help="measured seconds per point (48; quick: 16)")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds after the ramp (8)")
    p.add_argument("--period", type=float, default=8.0, help="seconds between questions (8)")
    p.add_argument(
        "--barge-in",
        type=float,
        metavar="S",
        help="say goodbye S s into the reply to the last question, over it (default: after it)",
    )
    p.add_argument("--interpreters", default="ft,gil", help="ft, gil or both (default ft,gil)")
    p.add_argument("--agent", choices=("offline", "cloud"), default="offline")
    p.add_argument("--out", metavar="STEM", help="write STEM.json, .md, .png")
    parsed = p.parse_args()
    parsed.seconds = parsed.seconds or (16.0 if parsed.quick else 48.0)
    main(parsed)
