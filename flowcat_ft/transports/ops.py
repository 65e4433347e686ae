"""Operations endpoints on the media server's own port: health, readiness and metrics.

``GET /health`` answers 200 while the process serves; ``GET /ready`` answers 200 while it
accepts new calls (503 when stopping or at capacity); ``GET /metrics`` is the runtime's and
the server's metrics in Prometheus' text format. The formatting is a pure function of two
snapshots, tested without a socket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def prometheus_text(runtime: Mapping[str, Any], server: Mapping[str, Any]) -> str:
    """Prometheus text exposition of ``Runtime.metrics()`` and ``WebSocketServer.stats()``."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> None:
        lines.append(f"# HELP flowcat_{name} {help_}")
        lines.append(f"# TYPE flowcat_{name} {kind}")
        lines.extend(f"flowcat_{name}{labels} {value:g}" for labels, value in samples)

    calls, slabs, gc = runtime["calls"], runtime["slabs"], runtime["gc"]
    metric("calls_active", "gauge", "Calls running now.", [("", calls["active"])])
    metric("calls_ended_total", "counter", "Calls ended.", [("", calls["ended"])])
    metric("slabs_in_use", "gauge", "Audio slabs taken from the pool.", [("", slabs["in_use"])])
    metric("slabs_capacity", "gauge", "Audio slabs in the pool.", [("", slabs["capacity"])])
    metric("slab_drops_total", "counter", "Frames dropped: no slab free.", [("", slabs["drops"])])
    metric(
        "gc_collections_total",
        "counter",
        "Garbage collections by the runtime.",
        [("", gc["collections"])],
    )
    metric(
        "gc_pause_max_seconds",
        "gauge",
        "Longest garbage-collection pause.",
        [("", gc["pause"]["max_us"] / 1e6)],
    )
    stages = [
        (f'{{stage="{stage["thread"]}"}}', stage)
        for pipeline in runtime["pipelines"]
        for stage in pipeline["stages"]
    ]
    metric(
        "stage_frames_total",
        "counter",
        "Frames a stage thread handled.",
        [(labels, s["frames"]) for labels, s in stages],
    )
    metric(
        "stage_frames_per_second",
        "gauge",
        "Frames a stage thread handles per second.",
        [(labels, s["frames_per_s"]) for labels, s in stages],
    )
    metric(
        "stage_queue_depth",
        "gauge",
        "Frames waiting for a stage thread.",
        [(labels, s["queue_depth"]) for labels, s in stages],
    )
    metric(
        "stage_frame_seconds",
        "gauge",
        "Time a stage spends per frame (upper bounds).",
        [
            (f'{labels[:-1]},quantile="{q}"}}', s["frame_time"][f"p{q[2:]}_us"] / 1e6)
            for labels, s in stages
            for q in ("0.50", "0.99")
        ],
    )
    metric(
        "stage_dropped_stale_total",
        "counter",
        "Frames an interruption made stale.",
        [(labels, s["dropped_stale"]) for labels, s in stages],
    )
    metric(
        "connections_active",
        "gauge",
        "WebSocket connections open now.",
        [("", server["connections"])],
    )
    metric(
        "connections_refused_total",
        "counter",
        "Connections refused at capacity.",
        [("", server["refused"])],
    )
    metric(
        "connections_closed_total",
        "counter",
        "Connections closed, by close code.",
        [(f'{{code="{code}"}}', n) for code, n in sorted(server["close_codes"].items())],
    )
    if "limits" in server:
        metric(
            "client_limit_refusals_total",
            "counter",
            "Connections and requests refused by a limit per client address (429).",
            [("", server["limits"]["refused"])],
        )
    return "\n".join(lines) + "\n"
