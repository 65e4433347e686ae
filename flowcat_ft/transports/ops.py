"""Operations endpoints on the media server's own port: health, readiness and metrics.

``GET /health`` answers 200 while the process serves, draining or not, loaded or not (a
liveness probe must not restart a busy server); ``GET /ready`` answers 200 while it takes
new calls (503 while draining, at ``max_calls``, or with no measured headroom left, the
reason in the body); ``GET /metrics`` is the runtime's and the server's metrics in
Prometheus' text format, with what an autoscaler reads: calls active and their limit,
headroom, calls refused by reason, whether the server is ready and whether it drains. The
formatting is a pure function of two snapshots, tested without a socket.
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
    if server["max_calls"] is not None:
        metric("calls_max", "gauge", "Calls the server takes at once.", [("", server["max_calls"])])
    metric(
        "calls_refused_total",
        "counter",
        "New calls refused, by reason.",
        [(f'{{reason="{reason}"}}', n) for reason, n in server["refusals"].items()],
    )
    metric("ready", "gauge", "1 while the server takes new calls.", [("", server["ready"])])
    metric(
        "draining",
        "gauge",
        "1 once the server drains: it takes no new call.",
        [("", server["draining"])],
    )
    load = server["load"]
    if load is not None:
        metric(
            "headroom_ratio",
            "gauge",
            "What measured load leaves: 1 - the worst delay as a fraction of its bound.",
            [("", load["headroom"])],
        )
        metric(
            "overloaded",
            "gauge",
            "1 while measured load refuses new calls.",
            [("", load["overloaded"])],
        )
        metric(
            "event_loop_lag_seconds",
            "gauge",
            "The worst event loop's lag at the last sample.",
            [("", load["loop_lag_s"])],
        )
        metric(
            "stage_queue_delay_seconds",
            "gauge",
            "The worst stage thread's queue delay at the last sample.",
            [("", load["queue_delay_s"])],
        )
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
