"""flowcat-ft's echo server for the benchmark: WebSocket in → µ-law decode → pass-through
→ echo → µ-law encode → WebSocket out, 7 processors on the runtime's stage threads.

The transport hands the pipeline the wire's µ-law (``decode_input=False``), so decoding is
a stage (:class:`~flowcat_ft.audio.processors.G711Decoder`), and so is encoding; replies
go out as they come (``pace_output=False``), so a round trip measures the runtime, not a
playout clock. Serves ``/raw?codec=mulaw&sample_rate=8000`` (binary µ-law) and ``/twilio``.
With ``--sip`` it also answers SIP calls over UDP on the same port number, with RTP media
on the same event loops and runtime (:func:`start_sip`): ``unpaced`` hands each packet to
the pipeline as it arrives and sends each reply as it comes, as the WebSocket path does
here; ``paced`` is what a phone call gets (the jitter buffer and one packet every 20 ms).
Run by the kit in ``.venv-ft`` or ``.venv-gil``; :func:`start` also serves a test in-process.
"""

from __future__ import annotations

import logging

from bench.echo._serving import arguments, name_threads, raise_fd_limit, serve_until_stopped
from flowcat_ft import Pipeline, Runtime
from flowcat_ft.agents.echo import echo_pipeline
from flowcat_ft.audio.processors import G711Decoder, G711Encoder
from flowcat_ft.transports.server import WebSocketServer, split_cores
from flowcat_ft.transports.session import MediaOptions
from flowcat_ft.transports.sip import SipOptions, SipServer
from flowcat_ft.waiting import STRATEGIES

PROCESSORS = 7
"""Processors in the benchmark's pipeline, as in the published comparison."""

MAX_CALLS = 5000
RTP_PORTS = (20000, 30000)
SIP_SHAPES = ("unpaced", "paced")


def bench_pipeline() -> Pipeline:
    """µ-law decode, 4 pass-through processors, echo, µ-law encode."""
    return Pipeline([G711Decoder, echo_pipeline(PROCESSORS - 2), G711Encoder])


def start(
    port: int, loops: int | None = None, threads: int | None = None, wait: str | None = None
) -> WebSocketServer:
    """Start the echo server on 127.0.0.1:``port`` (0: a free one) with ``loops`` event-loop
    threads and ``threads`` stage threads (default: the server's split of the cores, see
    :func:`~flowcat_ft.transports.server.split_cores`) waiting with strategy ``wait``
    (default: the runtime's). Stop it with ``server.stop()`` then
    ``server.runtime.stop()``."""
    default_loops, default_threads = split_cores(loops)
    loops, threads = loops or default_loops, threads or default_threads
    runtime = Runtime(threads=threads, slabs=4 * MAX_CALLS, max_calls=MAX_CALLS, wait_strategy=wait)
    server = WebSocketServer(
        runtime,
        bench_pipeline(),
        host="127.0.0.1",
        port=port,
        loops=loops,
        options=MediaOptions(decode_input=False, pace_output=False),
        max_calls=MAX_CALLS,
    )
    return server.start()


def start_sip(server: WebSocketServer, shape: str = "unpaced") -> SipServer:
    """Answer SIP calls over UDP on 127.0.0.1, on ``server``'s port number, loops and
    runtime, with the benchmark's pipeline; ``shape`` is one of :data:`SIP_SHAPES`. Stop
    it with ``stop()`` before ``server``."""
    options = SipOptions(
        host="127.0.0.1",
        port=server.port,
        transports=("udp",),
        rtp_ports=RTP_PORTS,
        max_calls=MAX_CALLS,
    )
    media = MediaOptions(decode_input=False, pace_output=shape == "paced")
    sip = SipServer(server.runtime, bench_pipeline(), options, media=media, loops=server.loops)
    return sip.start()


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--loops", type=int, default=None, help="event-loop threads (half the cores)")
    p.add_argument("--threads", type=int, default=None, help="stage threads (the other cores)")
    p.add_argument("--wait", choices=STRATEGIES, help="how idle stage threads wait")
    p.add_argument("--sip", choices=SIP_SHAPES, help="also answer SIP calls (UDP, same port)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raise_fd_limit()
    name_threads()
    server = start(args.port, args.loops, args.threads, args.wait)
    sip = start_sip(server, args.sip) if args.sip else None
    try:
        threads = server.runtime.threads
        also = f", SIP with {args.sip} RTP" if sip else ""
        serve_until_stopped(f"flowcat-ft {server.loop_count} loops, {threads} stage threads{also}")
    finally:
        if sip is not None:
            sip.stop(grace=2)
        server.stop(grace=2)
        server.runtime.stop()


if __name__ == "__main__":
    main()
