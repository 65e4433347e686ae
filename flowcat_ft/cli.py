"""The ``flowcat-ft`` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from flowcat_ft.agents.echo import echo_pipeline
from flowcat_ft.runtime import Runtime
from flowcat_ft.transports.server import CARRIERS, WebSocketServer
from flowcat_ft.transports.session import MediaOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowcat-ft", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve calls over WebSocket media streams")
    serve.add_argument(
        "--agent",
        choices=("offline", "echo"),
        default="offline",
        help="offline: a talking agent that needs no network (default); echo: hear yourself",
    )
    serve.add_argument("--graph", help="conversation graph YAML for the offline agent")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--loops", type=int, default=None, help="event-loop threads")
    serve.add_argument("--max-calls", type=int, default=1000)
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument(
        "--profile",
        metavar="DIR",
        help="profile stage threads with pyinstrument into DIR (turns the GIL on)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    if args.agent == "offline":
        from flowcat_ft.services.offline import GraphError, offline_agent_pipeline

        try:
            pipeline = offline_agent_pipeline(args.graph)
        except (GraphError, OSError) as error:
            print(f"flowcat-ft: {error}", file=sys.stderr)
            return 2
        options = MediaOptions(sample_rate=16000)  # the agent works at 16 kHz
    else:
        pipeline, options = echo_pipeline(), MediaOptions()
    runtime = Runtime(max_calls=args.max_calls, profile_dir=args.profile)
    server = WebSocketServer(
        runtime,
        pipeline,
        options=options,
        host=args.host,
        port=args.port,
        loops=args.loops,
        max_calls=args.max_calls,
    )
    try:
        server.start()
    except OSError as error:
        print(f"flowcat-ft: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        runtime.stop()
        return 1
    free = "free-threaded" if not sys._is_gil_enabled() else "GIL"
    version = sys.version.split()[0]
    print(f"flowcat-ft serving the {args.agent} agent on {version} ({free} build)")
    for name in CARRIERS:
        print(f"  {name:7} ws://{args.host}:{server.port}/{name}")
    print("Ctrl-C to stop.", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    print("stopping: letting calls finish...", flush=True)
    server.stop(grace=5.0)
    runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
