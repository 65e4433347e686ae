"""The live status page: calls, stages, the slab pool, gc, CPU by part (each thread and
worker process: :mod:`flowcat_ft.cpu`), the output's pauses for barge-in (in all, and
how they ended), and a chart of turn latency.

``GET /status`` is a page that polls ``GET /status.json`` once a second; the JSON is a
snapshot any monitoring script can read too. Building it only reads counters the runtime
and the server publish for other threads (see their threading contracts).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Mapping
from importlib import resources

from flowcat_ft.runtime import Runtime
from flowcat_ft.transports.http import HttpRequest, HttpResponse, PageHandler
from flowcat_ft.transports.server import WebSocketServer

__all__ = ["TURN_WINDOW_SECS", "process_usage", "snapshot", "status_pages"]

TURN_WINDOW_SECS = 300.0
"""How far back the latency chart goes."""


def snapshot(
    server: WebSocketServer,
    runtime: Runtime,
    started_at: float,
    extras: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, object]:
    """What the server is doing now, as plain JSON-able data; ``extras`` adds sections
    (such as ``"webrtc"``: the WebRTC gateway's status)."""
    metrics = runtime.metrics()
    now = time.time()
    calls = []
    for session in server.sessions:
        call, stream = session.call, session.serializer.stream
        if call is None:
            continue
        turns = session.turns.recent()
        calls.append(
            {
                "id": call.id,
                "carrier": session.serializer.name,
                "carrier_call_id": stream.call_id if stream else "",
                "transport": (stream.metadata.get("parameters") or {}).get("transport", "")
                if stream
                else "",
                "seconds": round(session.io.loop.time() - session.opened_at, 1),
                "frames_in": session.frames_in,
                "frames_out": session.frames_out,
                "dropped_in": session.dropped_in,
                "interruptions": session.clears,
                "pauses": session.pause_counts,
                "last_latency_ms": round(turns[-1].latency_ms, 1) if turns else None,
            }
        )
    stages = [
        {
            "thread": stage["thread"],
            "calls": pipeline["calls"],
            "queue_depth": stage["queue_depth"],
            "frames_per_s": stage["frames_per_s"],
            "p99_us": stage["frame_time"]["p99_us"],
            "max_us": stage["frame_time"]["max_us"],
        }
        for pipeline in metrics["pipelines"]
        for stage in pipeline["stages"]
    ]
    gc = metrics["gc"]
    return {
        "server": {
            "python": sys.version.split()[0],
            "gil_enabled": sys._is_gil_enabled(),
            "uptime_s": round(now - started_at),
            "port": server.port,
            "loops": server.loop_count,
        },
        "connections": server.stats(),
        "pauses": server.pause_counts(),
        "calls": sorted(calls, key=lambda c: c["id"]),
        "stages": stages,
        "slabs": metrics["slabs"],
        "gc": {
            "collections": gc["collections"],
            "collected": gc["collected"],
            "reasons": gc["reasons"],
            "pause": gc["pause"],
            "all_pauses": gc["process_pause"],
            "garbage": gc["garbage"],
        },
        "process": process_usage(),
        "cpu": metrics["cpu"],
        "turns": [
            [round(t.at, 3), round(t.latency_ms, 1)]
            for t in server.turns.recent()
            if now - t.at <= TURN_WINDOW_SECS
        ],
        **{name: report() for name, report in (extras or {}).items()},
    }


def process_usage() -> dict[str, int | None]:
    """This process's resident memory (bytes), open file descriptors and threads: what a
    long run watches for leaks (``bench.soak``). Read from ``/proc`` (Linux); ``-1`` where
    there is none. ``traced_bytes``: the memory Python's objects hold now, as
    :mod:`tracemalloc` counts it while it traces (``PYTHONTRACEMALLOC=1``), else None;
    RSS growing while it stays flat is the allocator keeping memory, not a leak."""
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        rss, fds, threads = -1, -1, threading.active_count()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    return {"rss_bytes": rss, "open_fds": fds, "threads": threads, "traced_bytes": traced}


def status_pages(
    server: WebSocketServer,
    runtime: Runtime,
    extras: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, PageHandler]:
    """``/status`` (the page) and ``/status.json`` (its data)."""
    started_at = time.time()
    page = resources.files(__package__).joinpath("status.html").read_bytes()

    def status(request: HttpRequest) -> HttpResponse:
        return HttpResponse(body=page, content_type="text/html; charset=utf-8")

    def status_json(request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(snapshot(server, runtime, started_at, extras))

    return {"/status": status, "/status.json": status_json}
