"""WebRTC through the companion processes: their CPU per call, the delay they add, and
calls spread over a pool of them.

Run on the free-threaded venv (the server under test runs in this process; the companions
and the peers run on ``.venv-gil``, where aiortc is installed)::

    .venv-ft/bin/python -m bench.webrtc --quick

The server runs the echo agent with a :class:`~flowcat_ft.transports.webrtc.WebRTCGateway`
bridging to its ``/raw`` route (PCM16, 16 kHz). For each number of calls K, the aiortc
peer (``tests/transports/webrtc_peer.py --clicks``, K calls in one GIL process) calls over
WebRTC, through one companion, then makes K direct WebSocket calls on ``/raw`` sending the
same audio. Then ``--spread`` WebRTC calls (more than one companion carries comfortably)
go through one companion, and then through a pool of ``--companions``. Each call sends a
10 ms tone burst every second and times it from leaving the peer to its echo arriving (see
the peer's docstring: 20 ms resolution).

CPU is measured over a window in the middle of the calls, once every call is up: the
server is this process (``time.process_time``), the companions and the peer are read from
``/proc/PID/stat``. ``%/call`` is CPU seconds over window seconds, over K, in percent of
one core; ``busiest companion %``, the companion that used the most, in percent of one
core (a GIL process tops out at 100). The peer is one GIL process too, so on a small
machine it runs out of a core about when one companion does. A WebRTC round trip includes
aiortc's fixed jitter buffer twice (it holds 4 frames, 80 ms, before decoding: once in the
companion, once in the measuring peer, where a browser would use its own adaptive one);
the WebSocket round trip includes neither.

``min`` is the bridge's own delay. The echo never pauses, so on a busy machine a stall
anywhere upstream of the server (the peer, the companion) leaves a burst that the server's
output pacing then holds for the rest of the call: ``p50`` grows with the load on the
machine, while a talking agent's pacing queue empties between its turns.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench._common import ROOT, cores, finish, header, parser, percentiles, python_of, table
from flowcat_ft import Runtime
from flowcat_ft.agents.echo import echo_pipeline
from flowcat_ft.transports.server import WebSocketServer
from flowcat_ft.transports.webrtc import WebRTCGateway

MEDIA = "/raw?codec=pcm16&sample_rate=16000"
PEER = ROOT / "tests" / "transports" / "webrtc_peer.py"
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(
    server: WebSocketServer, companions: list[int], target: list[str], calls: int, seconds: float
) -> dict[str, object]:
    """K calls of the peer for ``seconds``; CPU over a window once all are up (``companions``:
    the companion pids, none for direct WebSocket calls)."""
    command = [str(python_of("gil")), str(PEER), *target, "--clicks"]
    command += ["--peers", str(calls), "--seconds", str(seconds)]
    began = time.monotonic()
    while server.sessions:  # the last run's calls are still closing
        if time.monotonic() - began > 10:
            raise RuntimeError(f"calls left over: {server.sessions}")
        time.sleep(0.05)
    peer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    while sum(s.frames_in > 0 for s in server.sessions) < calls:
        if peer.poll() is not None or time.monotonic() - began > 60:
            raise RuntimeError(f"{' '.join(command)}: the calls did not start")
        time.sleep(0.05)
    window = max(1.0, seconds - 2.0)
    time.sleep(0.5)

    def cpu() -> tuple[float, list[float], float]:
        return time.process_time(), [proc_cpu(pid) for pid in companions], proc_cpu(peer.pid)

    before = cpu()
    time.sleep(window)
    after = cpu()
    rss = sum(proc_rss_mb(pid) for pid in companions)
    out, _ = peer.communicate(timeout=seconds + 60)
    if peer.returncode:
        raise RuntimeError(f"{' '.join(command)} failed (exit {peer.returncode})")
    peers = json.loads(out.strip().splitlines()[-1])["peers"]
    round_trips = [ms for p in peers for ms in p.get("round_trip_ms", [])]
    if not round_trips:
        raise RuntimeError(f"{' '.join(command)}: no echo came back: {peers}")
    each = [(a - b) / window * 100 for a, b in zip(after[1], before[1], strict=True)]
    return {
        "calls": calls,
        "companions": len(companions),
        "server_pct_per_call": (after[0] - before[0]) / window / calls * 100,
        "companion_pct_per_call": sum(each) / calls if companions else None,
        "busiest_companion_pct": max(each, default=None),
        "peer_pct_per_call": (after[2] - before[2]) / window / calls * 100,
        "companion_rss_mb": rss or None,
        "round_trip_ms": {"min": min(round_trips), **percentiles(round_trips, (50, 99))},
        "clicks": len(round_trips),
    }


@contextlib.contextmanager
def serving(companions: int) -> Iterator[tuple[WebSocketServer, list[int]]]:
    """The echo agent's server with a gateway of ``companions``; the server and their pids."""
    gateway = WebRTCGateway(MEDIA, companions=companions)
    if not gateway.available:
        raise SystemExit(gateway.status()["last_error"])
    runtime = Runtime(slabs=4096)
    server = WebSocketServer(
        runtime,
        echo_pipeline(),
        port=0,
        pages=gateway.pages(),
        sockets=gateway.sockets(),
        guards=gateway.guards(),
    ).start()
    gateway.start(f"ws://127.0.0.1:{server.port}")
    try:
        deadline = time.monotonic() + 60
        while not all(c["running"] for c in gateway.status()["companions"]):
            if time.monotonic() > deadline:
                raise SystemExit(f"the companions did not start: {gateway.status()}")
            time.sleep(0.05)
        yield server, [c["pid"] for c in gateway.status()["companions"]]
    finally:
        gateway.stop()
        server.stop(grace=1)
        runtime.stop()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, nargs="+", help="numbers of calls (default 1 4 [8])")
    p.add_argument("--seconds", type=float, help="seconds per run (default 20, quick 8)")
    p.add_argument("--spread", type=int, help="calls over 1 companion, then N (default 16)")
    p.add_argument("--companions", type=int, help="N for --spread (default: the cores, 2 or more)")
    args = p.parse_args()
    counts = args.calls or ([1, 4] if args.quick else [1, 4, 8])
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    spread = 16 if args.spread is None else args.spread
    pool = args.companions or max(2, cores())
    header("webrtc", args)
    print(f"echo agent; per K: K WebRTC calls, then K WebSocket calls; {seconds:g} s each")

    runs = []
    with serving(1) as (server, companions):
        idle_rss = proc_rss_mb(companions[0])
        offer = ["--offer", f"http://127.0.0.1:{server.port}/webrtc/offer"]
        direct = ["--ws", f"ws://127.0.0.1:{server.port}{MEDIA}"]
        for calls in counts:
            runs.append(("webrtc", measure(server, companions, offer, calls, seconds)))
            runs.append(("websocket", measure(server, [], direct, calls, seconds)))
        spreads = [measure(server, companions, offer, spread, seconds)] if spread else []
    if spread:
        with serving(pool) as (server, companions):
            offer = ["--offer", f"http://127.0.0.1:{server.port}/webrtc/offer"]
            spreads.append(measure(server, companions, offer, spread, seconds))

    rows = [
        [
            mode,
            r["calls"],
            r["server_pct_per_call"],
            r["companion_pct_per_call"] if mode == "webrtc" else float("nan"),
            r["peer_pct_per_call"],
            r["round_trip_ms"]["min"],
            r["round_trip_ms"]["p50"],
            r["round_trip_ms"]["p99"],
        ]
        for mode, r in runs
    ]
    headers = ["transport", "calls", "server %/call", "companion %/call", "peer %/call"]
    rtts = ["rtt min ms", "rtt p50 ms", "rtt p99 ms"]
    print(table([*headers, *rtts], rows))
    by_calls = {}
    for mode, r in runs:
        by_calls.setdefault(str(r["calls"]), {})[mode] = r
    added = {
        stat: {
            k: v["webrtc"]["round_trip_ms"][stat] - v["websocket"]["round_trip_ms"][stat]
            for k, v in by_calls.items()
        }
        for stat in ("min", "p50")
    }
    print(f"companion RSS: {idle_rss:.0f} MB idle")
    for stat, by_k in added.items():
        print(
            f"added round trip ({stat}): "
            + ", ".join(f"{k} calls {v:.0f} ms" for k, v in by_k.items())
        )
    print(
        "aiortc holds 4 frames (80 ms) before decoding, in the companion and in the measuring "
        "peer: 160 ms of each WebRTC round trip (a browser uses its own adaptive buffer)"
    )
    if spreads:
        print(f"\n{spread} WebRTC calls over 1 companion, then over {pool}:")
        rows = [
            [
                r["companions"],
                r["companion_pct_per_call"],
                r["busiest_companion_pct"],
                r["server_pct_per_call"],
                r["peer_pct_per_call"],
                *r["round_trip_ms"].values(),
            ]
            for r in spreads
        ]
        headers = ["companions", "companion %/call", "busiest companion %", "server %/call"]
        print(table([*headers, "peer %/call", *rtts, "rtt max ms"], rows))
    finish(
        {
            "bench": "webrtc",
            "seconds": seconds,
            "companion_idle_rss_mb": idle_rss,
            "added_round_trip_ms": added,
            "runs": by_calls,
            "spread": spreads,
        },
        args,
    )


if __name__ == "__main__":
    main()
